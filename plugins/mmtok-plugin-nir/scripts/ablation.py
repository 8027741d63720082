"""The SpectralFM ablations of issue 17: each change measured on its own, on real Corn.

    python plugins/mmtok-plugin-nir/scripts/ablation.py --checkpoint NAME=RUN_DIR[:model_step500] ... \
        [--heads ridge,pls,mlp] [--features z_chem,tokens] [--pair m5-mp6] [--repeats 10] --out DIR

For every checkpoint (a pretraining variant: VIB weight / KL warm-up / free bits / length) and
every (features, head):

- ``spread``: mean per-feature std of mu_chem over the calibration spectra (the VIB collapse);
- ``val``: the choice criterion, computed inside the 60-sample calibration pool only: 5-fold
  CV RMSE of the head on source-instrument features, divided by the property's SD in the pool,
  averaged over the 4 properties (lower is better). Defaults are picked on this column;
- ``m5->m5``: source-instrument test RMSEP (no transfer) of the head, next to PLS on the raw
  spectra (does z_chem carry chemistry?);
- ``N=10``: mean RMSEP over 10 draws of the transfer protocol (pair ``--pair``), per property.

Test columns are reported, never used to choose. Writes ``ablation.json`` and ``ablation.md``.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold

from mmtok import atomic_write
from mmtok_plugin_nir.baselines import fit_pls
from mmtok_plugin_nir.calibration_heads import make_head
from mmtok_plugin_nir.datasets import load_corn
from mmtok_plugin_nir.metrics import regression_metrics
from mmtok_plugin_nir.model.spectralfm import SpectralFM
from mmtok_plugin_nir.preprocessing import prepare
from mmtok_plugin_nir.protocol import TransferSetting, calibration_split, run_transfer
from mmtok_plugin_nir.transfer import SpectralFMTransfer


def _load(spec: str) -> tuple[str, SpectralFM]:
    name, _, path = spec.partition("=")
    path, _, snapshot = path.partition(":")
    file = Path(path) / f"{snapshot or 'model'}.safetensors"
    return name, SpectralFM.load(file)


@torch.no_grad()
def _features(model: SpectralFM, x: np.ndarray, wl: np.ndarray, kind: str) -> np.ndarray:
    s, grid = prepare(x, wl, model.config.n_points)
    out = model(s, grid, torch.zeros(len(s), dtype=torch.long))
    parts = []
    if "z_chem" in kind:
        parts.append(out.mu_chem)
    if "tokens" in kind:
        parts.append(out.tokens[:, 2:].flatten(1))
    return torch.cat(parts, 1).double().numpy()


def _cv_rmse(head: str, z: np.ndarray, y: np.ndarray) -> float:
    sq = []
    for tr, va in KFold(5, shuffle=True, random_state=0).split(z):
        sq.append((make_head(head).fit(z[tr], y[tr]).predict(z[va]) - y[va]) ** 2)
    return float(np.sqrt(np.concatenate(sq).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=RUN_DIR[:SNAPSHOT]")
    parser.add_argument("--heads", default="ridge,pls,mlp")
    parser.add_argument("--features", default="z_chem")
    parser.add_argument("--pair", default="m5-mp6")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-transfer", action="store_true", help="skip the N = 10 transfer columns")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    corn = load_corn()
    pool, test = calibration_split(corn)
    source, target = args.pair.split("-")
    xs = corn.instrument(source)
    props = list(corn.property_names)
    pls = {p: regression_metrics(corn.property(p)[test], fit_pls(xs[pool], corn.property(p)[pool])
                                 .predict(xs[test]))["rmsep"] for p in props}
    rows = []
    for spec in args.checkpoint:
        name, model = _load(spec)
        for kind in args.features.split(","):
            z = _features(model, xs, corn.wavelength_nm, kind)
            mean, std = z[pool].mean(0), z[pool].std(0) + 1e-8
            zs = (z - mean) / std
            spread = float(_features(model, xs[pool], corn.wavelength_nm, "z_chem").std(0).mean())
            for head in args.heads.split(","):
                row = {"checkpoint": name, "features": kind, "head": head, "spread": spread, "val": 0.0,
                       "source_rmsep": {}, "transfer_rmsep": {}}
                for p in props:
                    y = corn.property(p)
                    row["val"] += _cv_rmse(head, zs[pool], y[pool]) / y[pool].std() / len(props)
                    fitted = make_head(head).fit(zs[pool], y[pool])
                    row["source_rmsep"][p] = regression_metrics(y[test], fitted.predict(zs[test]))["rmsep"]
                    if not args.no_transfer:
                        setting = TransferSetting("corn", source, target, p, 10, args.repeats)
                        res = run_transfer(corn, setting, lambda: SpectralFMTransfer(model, corn.wavelength_nm,
                                                                                     features=kind, head=head))
                        row["transfer_rmsep"][p] = [res.mean("rmsep"), res.std("rmsep")]
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "ablation.json", lambda f: f.write_text(json.dumps({"pls_source_rmsep": pls, "rows": rows},
                                                                          indent=1)))
    lines = [f"| checkpoint | features | head | mu_chem spread | val (CV RMSE / SD, cal pool) | "
             + " | ".join(f"{p} {source}→{source}" for p in props)
             + ("" if args.no_transfer else " | " + " | ".join(f"{p} N=10 {source}→{target}" for p in props)) + " |",
             "|---|---|---|---:|---:|" + "---:|" * (len(props) * (1 if args.no_transfer else 2)),
             "| PLS on raw spectra | | | | | " + " | ".join(f"{pls[p]:.3f}" for p in props)
             + ("" if args.no_transfer else " |" + " |" * len(props)) + " |"]
    for r in rows:
        cells = [f"{r['source_rmsep'][p]:.3f}" for p in props]
        if not args.no_transfer:
            cells += [f"{r['transfer_rmsep'][p][0]:.3f} ± {r['transfer_rmsep'][p][1]:.3f}" for p in props]
        lines.append(f"| {r['checkpoint']} | {r['features']} | {r['head']} | {r['spread']:.2e} | {r['val']:.3f} | "
                     + " | ".join(cells) + " |")
    atomic_write(out / "ablation.md", lambda f: f.write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Fit the pretrained codecs shipped in mmtok-plugin-nir on the plugin's real Corn and Tablet data
and measure them on held-out spectra. Byte-reproducible: run it twice, the sha256 of every file
is the same (one thread, deterministic kernels, seed 0, no timings in metrics.json).

    OMP_NUM_THREADS=1 python plugins/mmtok-plugin-nir/scripts/fit_pretrained.py            # write
    OMP_NUM_THREADS=1 python plugins/mmtok-plugin-nir/scripts/fit_pretrained.py --out /tmp/a  # elsewhere
    sha256sum src/mmtok_plugin_nir/data/pretrained/*/*                                     # compare

Training data (never the benchmark's test rows, `protocol.calibration_split`):

* Corn: the 60 calibration-pool samples on all 3 instruments (m5, mp5, mp6), 180 spectra;
* Tablet: the Train + Validate tablets (195) on both instruments, 390 spectra.

Held out (metrics.json "test"): the 20 Corn test samples x 3 instruments and the 460 Tablet
Test tablets x 2 instruments, each reported separately.

Codecs (`PRETRAINED`): ``nir-spectrum-fsq`` (2000 AdamW steps, batch 64, lr 2e-3) on the 570
spectra of both data sets; ``nir-properties-quantile`` on the Corn pool's 4 properties (statistics only). About 5 minutes on one
CPU thread. Each folder holds ``config.json`` + ``model.safetensors`` (`Codec.save_pretrained`) and
``metrics.json`` with the ``fitted_on`` record `mmtok plugins --codecs` shows.
"""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

import mmtok
from mmtok import evaluate_codec, fit_codec
from mmtok_plugin_nir.datasets import load_corn, load_tablet
from mmtok_plugin_nir.modalities import NIRSpectrum
from mmtok_plugin_nir.protocol import calibration_split

OUT = Path(__file__).resolve().parents[1] / "src" / "mmtok_plugin_nir" / "data" / "pretrained"
SEED = 0
STEPS = 2000
BATCH = 64
LR = 2e-3


def splits():
    """{'train'|'corn test'|'tablet test': (spectra batches, corn props, tablet props)}."""
    corn, tablet = load_corn(), load_tablet()
    corn_pool, corn_test = calibration_split(corn)
    tablet_pool = np.flatnonzero(np.isin(tablet.split, ["Train", "Validate"]))
    tablet_test = np.flatnonzero(tablet.split == "Test")
    def spectra(data, rows):
        return [data.to_modalities(inst, rows)[0] for inst in data.instruments]
    return {
        "corn_pool": corn_pool, "corn_test": corn_test, "tablet_pool": tablet_pool, "tablet_test": tablet_test,
        "train_spectra": spectra(corn, corn_pool) + spectra(tablet, tablet_pool),
        "corn_test_spectra": spectra(corn, corn_test), "tablet_test_spectra": spectra(tablet, tablet_test),
        "corn_props": (corn.to_modalities("m5", corn_pool)[1], corn.to_modalities("m5", corn_test)[1]),
    }


def on_common_axis(batches: list[NIRSpectrum], codec) -> NIRSpectrum:
    """Spectra of several axes as one batch for fitting: each resampled (cubic) to the codec's
    2048 points over its own range, which is what the codec does to any input anyway."""
    from mmtok_plugin_nir.codecs import resampled_axis
    from mmtok_plugin_nir.preprocessing import resample

    n = codec.config.size[0]
    out = []
    for m in batches:
        axis = m.wavelength_nm[0].double().numpy()
        values = resample(m.values.double().numpy(), axis, n)[0]
        out.append(NIRSpectrum(values=torch.as_tensor(values, dtype=torch.float32),
                               wavelength_nm=resampled_axis(m.wavelength_nm, n),
                               instrument=m.instrument, domain=m.domain))
    return NIRSpectrum.collate(out)


def report(codec, data, per_channel: bool = True) -> dict:
    """Held-out reconstruction of ``data``; per channel only where channels are few (columns)."""
    r = evaluate_codec(codec, data)
    target = torch.cat([codec.reconstruction_target(data[i:i + 256]) for i in range(0, len(data), 256)]).float()
    out = {k: v for k, v in r.to_dict().items() if k != "history" and (per_channel or k != "rmse_per_channel")}
    out["relative_rmse"] = r.rmse / float(target.pow(2).mean().sqrt())  # rmse / rms of the target
    out["samples"] = len(data)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder of the codec folders (default {OUT})")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    manager = mmtok.get_plugin_manager()
    d = splits()
    corn_rows = f"Corn calibration pool rows {d['corn_pool'].tolist()}"
    tablet_rows = "Tablet Train + Validate rows (split != 'Test')"
    written = []

    # -- the spectrum codec, on both data sets
    torch.manual_seed(SEED)
    codec = manager.build_codec("nir-spectrum-fsq")
    train = on_common_axis(d["train_spectra"], codec)
    fit = fit_codec(codec, train, steps=args.steps, batch_size=BATCH, lr=LR, seed=SEED, progress=False)
    tests = {"corn": NIRSpectrum.collate(d["corn_test_spectra"]), "tablet": NIRSpectrum.collate(d["tablet_test_spectra"])}
    metrics = {
        "codec": "nir-spectrum-fsq", "pretrained": "nir/corn-tablet-spectrum-fsq",
        "fitted_on": {"data": "Corn (Eigenvector / Cargill; m5, mp5, mp6) + Tablet (IDRC 2002; inst1, inst2), "
                              "mmtok_plugin_nir/data/corn.npz, tablet.npz",
                      "samples": len(train), "split": f"{corn_rows} x 3 instruments (180) + {tablet_rows} x 2 "
                      f"instruments ({2 * len(d['tablet_pool'])})",
                      "held_out": "Corn test rows x 3 instruments (60), Tablet Test x 2 instruments (920)"},
        "seed": SEED, "steps": args.steps, "batch_size": BATCH, "lr": LR, "fingerprint": codec.fingerprint(),
        "train": {k: v for k, v in fit.to_dict().items() if k not in ("history", "rmse_per_channel")},
        "test": {name: report(codec, data, per_channel=False) for name, data in tests.items()},
    }
    written.append(save(codec, args.out / "corn-tablet-spectrum-fsq", metrics))

    # -- the Corn property codec (statistics only). No Tablet one: its 3 columns are not the codec's 4, and
    # the hardness column's ties leave only 44 distinct quantiles of 64
    for name, key, config, data_name, rows in (
            ("corn-properties-quantile", "corn_props", {}, "Corn reference values (Moisture, Oil, Protein, Starch)",
             corn_rows),):
        train_p, test_p = d[key]
        codec = manager.build_codec("nir-properties-quantile", config)
        fit = fit_codec(codec, train_p, steps=0, progress=False)
        metrics = {
            "codec": "nir-properties-quantile", "pretrained": f"nir/{name}", "config": config,
            "fitted_on": {"data": f"{data_name}, mmtok_plugin_nir/data/{key.split('_')[0]}.npz",
                          "samples": len(train_p), "split": rows, "held_out": f"{len(test_p)} test rows"},
            "columns": list(train_p.names), "seed": SEED, "steps": 0, "fingerprint": codec.fingerprint(),
            "train": {k: v for k, v in fit.to_dict().items() if k != "history"},
            "test": report(codec, test_p),
        }
        written.append(save(codec, args.out / name, metrics))

    for folder in written:
        m = json.loads((folder / "metrics.json").read_text())
        tests = m["test"] if "rmse" not in m["test"] else {"": m["test"]}
        for where, t in tests.items():
            print(f"{folder.name:<28} held-out {where or 'test':<7} n={t['samples']:<4} rmse {t['rmse']:.4g} "
                  f"relative {t['relative_rmse']:.4f} nrmse {t['nrmse']:.3f} perplexity {t['perplexity']:.1f} "
                  f"codes used {t['codes_used']}/{t['vocab_size']}")
        for f in sorted(folder.iterdir()):
            print(f"  {hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name} ({f.stat().st_size} bytes)")


def save(codec, folder: Path, metrics: dict) -> Path:
    codec.save_pretrained(folder)
    mmtok.atomic_write(folder / "metrics.json",
                       lambda p: p.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n"))
    return folder


if __name__ == "__main__":
    main()

"""Fit the astro plugin's shipped pretrained codecs on its real data, byte-reproducibly.

    python plugins/mmtok-plugin-astro/scripts/fit_pretrained.py               # fit, save, report
    python plugins/mmtok-plugin-astro/scripts/fit_pretrained.py --check       # fit, report, write nothing
    python plugins/mmtok-plugin-astro/scripts/fit_pretrained.py --only gaia-cone-photometry --out /tmp/x

What is fitted (each codec built right after ``torch.manual_seed(SEED)``, so one codec's weights do
not depend on which others were fitted before it):

- ``hsc-cosmos-fsq24``: ``hsc-image-fsq`` at 24 x 24 (9 tokens of 1000), `mmtok.fit_codec` for
  `HSC_STEPS` AdamW steps on the 8 crops of the fields hsc_cosmos_35 and cut_hsc
  (`hsc_source_crops`); held out: the 6 crops of the *other* field hsc_cosmos (no shared pixels).
- ``hsc-cosmos-catalog``: ``source-catalog-quantile`` with 4 bins on the 6 SEP rows of hsc_cosmos.
  Those are all the catalogue rows there are: its numbers are on its training rows.
- ``gaia-cone-photometry`` / ``gaia-cone-astrometry``: ``gaia-photometry-quantile`` /
  ``gaia-astrometry-quantile`` with 8 bins on the Gaia "train" split (`gaia_split`: 40 sources, of
  which 34 have astrometry); held out: the 10 "test" sources (all have photometry and astrometry).

Reproducibility: one thread, ``torch.use_deterministic_algorithms(True)``, fixed seeds; rerunning
on the same torch build writes byte-identical ``model.safetensors`` (their sha256 is recorded in
``metrics.json``). The quantile codecs are exact quantiles of float64 data, so they do not depend
on the machine; the FSQ codec's weights may differ in the last bits on another torch / CPU.
Writes ``src/mmtok_plugin_astro/data/pretrained/<name>/{config.json, model.safetensors,
metrics.json}``. About 20 s on one CPU thread.
"""

import argparse
import platform
import time
from pathlib import Path

import torch

import mmtok
from mmtok import evaluate_codec, fit_codec, write_pretrained
from mmtok_plugin_astro import (GaiaAstrometry, GaiaPhotometry, HSCImage, SourceCatalog,
                                hsc_source_crops, load_gaia)

OUT = Path(__file__).resolve().parents[1] / "src" / "mmtok_plugin_astro" / "data" / "pretrained"
SEED = 0
HSC_STEPS = 800
HSC_SIZE = 24
HSC_TRAIN_FIELDS = ("hsc_cosmos_35", "cut_hsc")
HSC_TEST_FIELDS = ("hsc_cosmos",)

#: pretrained directory -> (codec name, config overrides); the multisurvey registry uses the same
CODECS = {
    "hsc-cosmos-fsq24": ("hsc-image-fsq", {"size": [HSC_SIZE, HSC_SIZE], "patch": [8, 8], "crop": "center"}),
    "hsc-cosmos-catalog": ("source-catalog-quantile", {"num_bins": 4}),
    "gaia-cone-photometry": ("gaia-photometry-quantile", {"num_bins": 8}),
    "gaia-cone-astrometry": ("gaia-astrometry-quantile", {"num_bins": 8}),
}


def make_deterministic() -> None:
    """One thread and deterministic kernels (call once, before fitting)."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def _hsc(fields: tuple[str, ...]) -> tuple[list[str], HSCImage]:
    """The 24 x 24 crops of ``fields`` as one HSCImage batch (flux only: not every file has
    variance / mask)."""
    crops = {sid: c for sid, c in hsc_source_crops(HSC_SIZE).items() if c["field"] in fields}
    images = [HSCImage(flux=HSCImage.from_record(c["record"], sample_id=sid).flux) for sid, c in crops.items()]
    return list(crops), HSCImage.collate(images)


def data(directory: str) -> dict:
    """{"train": batch, "test": batch or None, "train_ids": [...], "test_ids": [...], "data": text}."""
    if directory == "hsc-cosmos-fsq24":
        (tr_ids, tr), (te_ids, te) = _hsc(HSC_TRAIN_FIELDS), _hsc(HSC_TEST_FIELDS)
        return {"train": tr, "test": te, "train_ids": tr_ids, "test_ids": te_ids,
                "data": f"HSC COSMOS grizy {HSC_SIZE}x{HSC_SIZE} crops (hsc_source_crops), scarlet test data"}
    if directory == "hsc-cosmos-catalog":
        crops = {sid: c for sid, c in hsc_source_crops(HSC_SIZE).items() if c["catalog"]}
        rows = {col: [c["catalog"][col] for c in crops.values()] for col in SourceCatalog.columns}
        return {"train": SourceCatalog.from_catalog(rows), "test": None, "train_ids": list(crops),
                "test_ids": [], "data": "SEP catalogue of hsc_cosmos.npz (6 sources)"}
    modality = {"gaia-cone-photometry": GaiaPhotometry, "gaia-cone-astrometry": GaiaAstrometry}[directory]
    tr_ids, tr = load_gaia(modality, "train")
    te_ids, te = load_gaia(modality, "test")
    return {"train": tr, "test": te, "train_ids": tr_ids, "test_ids": te_ids,
            "data": "Gaia DR3 cone search RA 280, Dec -60 (data/gaia_dr3_cone_search_50.csv)"}


def fit_one(directory: str):
    """(fitted codec, metrics dict) of one pretrained codec; writes nothing."""
    codec_name, overrides = CODECS[directory]
    d = data(directory)
    torch.manual_seed(SEED)  # the initial weights
    codec = mmtok.get_plugin_manager().build_codec(codec_name, overrides)
    steps = HSC_STEPS if isinstance(codec, mmtok.NeuralCodec) else 0  # quantile codecs: statistics only
    train_report = fit_codec(codec, d["train"], steps=steps, batch_size=len(d["train"]), seed=SEED,
                             progress=False)
    test_report = evaluate_codec(codec, d["test"]) if d["test"] is not None else None

    def clean(report):
        return None if report is None else {k: v for k, v in report.to_dict().items() if k != "history"}

    columns = getattr(codec.modality, "columns", ()) or getattr(codec.modality, "bands", ())
    metrics = {
        "pretrained": f"astro/{directory}", "codec": codec_name, "config_overrides": overrides,
        "data": d["data"], "seed": SEED, "steps": steps,
        "train_samples": d["train_ids"], "test_samples": d["test_ids"],
        "channels": list(columns), "fingerprint": codec.fingerprint(),
        "train": clean(train_report),
        "test": clean(test_report) if test_report is not None else
        "none: every row there is was used to fit; no held-out data exists",
        "torch": torch.__version__, "machine": platform.machine(),
    }
    return codec, metrics


def row(directory: str, codec, metrics: dict) -> str:
    rep = metrics["test"] if isinstance(metrics["test"], dict) else metrics["train"]
    where = "held-out" if isinstance(metrics["test"], dict) else "train (no held-out)"
    rmse = ", ".join(f"{c} {v:.3g}" for c, v in zip(metrics["channels"], rep["rmse_per_channel"]))
    return (f"| `astro/{directory}` | {codec.num_tokens} x {codec.vocab_size} | "
            f"{len(metrics['train_samples'])} / {len(metrics['test_samples'])} | {where} | "
            f"{rep['nrmse']:.3f} | {metrics['train']['nrmse']:.3f} | {rmse} | "
            f"{rep['codes_used']} / {rep['vocab_size']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fit and report, write nothing")
    parser.add_argument("--only", choices=sorted(CODECS), action="append", help="fit only these")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder of the codec folders (default {OUT})")
    args = parser.parse_args()
    make_deterministic()
    rows, t0 = [], time.perf_counter()
    for directory in args.only or CODECS:
        codec, metrics = fit_one(directory)
        if not args.check:
            digest = write_pretrained(codec, args.out / directory, metrics)
            print(f"astro/{directory}: sha256 {digest}", flush=True)
        rows.append(row(directory, codec, metrics))
    print(f"\nfitted in {time.perf_counter() - t0:.1f} s; "
          f"{'nothing written (--check)' if args.check else f'saved to {args.out}'}\n")
    print("| pretrained | tokens x vocab | train / test samples | measured on | nRMSE | train nRMSE "
          "| RMSE per band / column | codes used / vocab |")
    print("|---|---|---|---|---:|---:|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

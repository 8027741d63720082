"""Fit the CT example's codecs on real crops, then encode / decode the example manifest.

    python examples/ct/fit_codecs.py [--out runs/ct] [--steps 300]

1. Loads the two real cases (NIfTI + DICOM, with their TotalSegmentator masks) at 3 x 1.5 x 1.5 mm.
2. Fits ``ct-volume-fsq`` (FSQ, 1000 codes, one token per 4x16x16 voxels) on 8x64x64 crops of
   the training slab, the report vocabulary on their templated reports; the mask codec needs no
   fitting. The CT codec is fully convolutional, so the same weights serve the whole-volume
   geometry (32x224x224) used for the manifest.
3. Writes ``OUT/registry.yaml`` (whole volumes) and ``OUT/registry_crops.yaml`` (crops), runs ``mmtok encode`` on ``examples/ct/manifest.json`` (one NIfTI
   and one DICOM case) and decodes every stream back, reporting the reconstruction error.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ct_data import CROP, SPACING, split_crops  # noqa: E402

import mmtok  # noqa: E402
from mmtok.encode import encode_manifest  # noqa: E402
from mmtok.fit import evaluate_shards, fit_codec  # noqa: E402

WHOLE = [32, 224, 224]
PATCH = [4, 16, 16]


def fit_codecs(out: Path, steps: int, seed: int = 0) -> dict[str, Path]:
    manager = mmtok.get_plugin_manager()
    train, test, _ = split_crops()
    dirs = {}
    crop_geometry = {"size": list(CROP), "patch": PATCH, "spacing_mm": SPACING}
    ct = manager.build_codec("ct-volume-fsq", crop_geometry)
    report = fit_codec(ct, train.volume(), val=test.volume(), steps=steps, batch_size=32, seed=seed,
                       progress=False)
    print(f"ct-volume-fsq on {len(train)} training crops, {steps} steps: held-out {report.summary()}")
    words = manager.build_codec("report-words", {"vocab_size": 256, "num_tokens": 112})
    words.fit_statistics(mmtok_report(train.reports))
    for geometry, sub in ((WHOLE, "whole"), (list(CROP), "crop")):  # same weights, two grids
        at = manager.build_codec("ct-volume-fsq", {**crop_geometry, "size": geometry})
        at.load_state_dict(ct.state_dict())
        dirs[sub] = {
            "tok_ct_volume": at.save_pretrained(out / "codecs" / sub / "ct-volume-fsq"),
            "tok_anatomy_mask": manager.build_codec("anatomy-mask-regions", {**crop_geometry, "size": geometry})
            .save_pretrained(out / "codecs" / sub / "anatomy-mask-regions"),
            "tok_report": words.save_pretrained(out / "codecs" / sub / "report-words")}
    return dirs


def mmtok_report(texts):
    from mmtok_plugin_ct import ReportText

    return ReportText.from_texts(texts)


def write_registry(path: Path, dirs: dict[str, Path]) -> Path:
    streams = {}
    for key, d in dirs.items():
        meta = json.loads((d / "config.json").read_text())
        codec = mmtok.get_plugin_manager().load_codec(d)
        streams[key] = {"modality": meta["modality"], "codec": meta["codec"], "config": meta["config"],
                        "vocab_size": codec.vocab_size, "num_tokens": codec.num_tokens,
                        "checkpoint": str(d.resolve())}
        streams[key]["config"].pop("modality")
    spec = {"version": 1, "streams": streams,
            "bundles": {"ct-encoder": {"streams": list(streams), "heads": ["ct-alignment"]}}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/ct"))
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    dirs = fit_codecs(args.out, args.steps)
    registry = write_registry(args.out / "registry.yaml", dirs["whole"])
    write_registry(args.out / "registry_crops.yaml", dirs["crop"])
    tokens = args.out / "tokens"
    if tokens.exists():
        import shutil

        shutil.rmtree(tokens)
    summary = encode_manifest(HERE / "manifest.json", tokens, registry_path=registry, progress=False)
    print(summary.table())
    errors = evaluate_shards(tokens, HERE / "manifest.json", registry)
    ct = errors["tok_ct_volume"]
    print(f"decoded CT volumes ({ct['samples']} cases, HU clipped to the soft-tissue window): "
          f"RMSE {ct['rmse']:.1f} HU, nRMSE {ct['nrmse']:.3f}")
    (args.out / "codec_report.json").write_text(json.dumps(errors, indent=2))
    return errors


if __name__ == "__main__":
    main()

"""Fit the CT plugin's shipped pretrained codecs on the real example data, byte-reproducibly.

    python plugins/mmtok-plugin-ct/scripts/fit_pretrained.py               # fit, save, report
    python plugins/mmtok-plugin-ct/scripts/fit_pretrained.py --check       # fit, report, write nothing
    python plugins/mmtok-plugin-ct/scripts/fit_pretrained.py --only abdomen-report-words --out /tmp/x

Needs the repository checkout: the data are examples/ct/data (two real TotalSegmentator test
cases, one NIfTI and one DICOM series, with their masks) and the crops / split of
examples/ct/ct_data.py (`split_crops`), used unchanged:

- train: 8 x 64 x 64 crops (3 x 1.5 x 1.5 mm) of slices 0-21 of the NIfTI case;
- held-out slab: crops of its slices 22-29 (no voxel shared with the training crops);
- unseen patient: crops of the DICOM case (another patient and scanner).

What is fitted (each codec built right after ``torch.manual_seed(SEED)``):

- ``abdomen-ct-fsq``: ``ct-volume-fsq`` with ``hidden: 32`` (181,400 weights, 0.7 MB; the
  default 64 would be 2.4 MB), FSQ 1000 codes, one token per 4 x 16 x 16 voxels,
  `mmtok.fit_codec` for `CT_STEPS` AdamW steps of batch `CT_BATCH` on the training crops. The
  codec is fully convolutional: the weights fitted at the crop size are saved at the example
  manifest's whole-volume geometry (`WHOLE` = 32 x 224 x 224 at 3 x 1.5 x 1.5 mm, 1,568 tokens),
  which is what examples/ct/registry.yaml streams. Held out: both crop sets above, and the two
  manifest cases at the whole-volume geometry (the NIfTI one is mostly training voxels, the
  DICOM one is the unseen patient).
- ``abdomen-report-words``: ``report-words`` (vocabulary 256, 112 tokens) with its vocabulary
  fitted on the templated reports of the training crops; held out: out-of-vocabulary rate and
  exact round trips on the reports of the held-out crops and of the manifest cases.

- ``abdomen-mask-regions``: ``anatomy-mask-regions`` at the same whole-volume geometry. It has no
  state (no weights, no buffers: the geometry is the codec) and nothing is fitted, but
  ``mmtok encode`` refuses a stream without ``checkpoint`` (it cannot tell a stateless codec
  from an unfitted one), so its config ships with an empty ``model.safetensors``. Its
  metrics.json gives the fraction of voxels whose region group is not their patch's dominant one
  (what a decoded, blocky mask gets wrong) on the held-out crop sets and the manifest cases.

Reproducibility: one thread, ``torch.use_deterministic_algorithms(True)``, fixed seeds; rerunning
on the same torch build writes byte-identical ``model.safetensors`` (sha256 in ``metrics.json``;
``seconds`` in metrics.json naturally differs). The report vocabulary is exact counting, so it is
the same on any machine; the FSQ weights may differ in the last bits on another torch / CPU.
Writes ``src/mmtok_plugin_ct/data/pretrained/<name>/{config.json, model.safetensors,
metrics.json}``. About 100 s on one CPU thread (15 s of it reading the two cases).
"""

import argparse
import hashlib
import platform
import sys
import time
from pathlib import Path

import torch

import mmtok
from mmtok import Manifest, evaluate_codec, fit_codec, write_pretrained
from mmtok_plugin_ct import ReportText
from mmtok_plugin_ct.text import tokenize

PLUGIN = Path(__file__).resolve().parents[1]
REPO = PLUGIN.parents[1]
EXAMPLE = REPO / "examples" / "ct"
OUT = PLUGIN / "src" / "mmtok_plugin_ct" / "data" / "pretrained"
SEED = 0
CT_STEPS = 500
CT_BATCH = 32
PATCH = [4, 16, 16]
WHOLE = [32, 224, 224]  # the example manifest's geometry (examples/ct/fit_codecs.py uses the same)

#: pretrained directory -> (codec name, config overrides); examples/ct/registry.yaml uses the same
CODECS = {
    "abdomen-ct-fsq": ("ct-volume-fsq", {"size": WHOLE, "patch": PATCH, "spacing_mm": [3.0, 1.5, 1.5],
                                         "hidden": 32}),
    "abdomen-report-words": ("report-words", {"vocab_size": 256, "num_tokens": 112}),
    "abdomen-mask-regions": ("anatomy-mask-regions", {"size": WHOLE, "patch": PATCH, "spacing_mm": [3.0, 1.5, 1.5]}),
}
DATA_FILES = ("example_ct_sm.nii.gz", "example_seg.nii.gz", "example_seg_dicom.nii.gz", "dicom_series")


def make_deterministic() -> None:
    """One thread and deterministic kernels (call once, before fitting)."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def _ct_data():
    """examples/ct/ct_data.py (the example's split), imported from the checkout."""
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    import ct_data

    return ct_data


def _sha256_file(path: Path) -> str:
    if path.is_dir():  # a DICOM series: hash of the sorted (name, sha256) list
        h = hashlib.sha256()
        for f in sorted(path.iterdir()):
            h.update(f"{f.name}:{_sha256_file(f)}\n".encode())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_files() -> dict[str, str]:
    """Repository path -> sha256 of every data file the codecs are fitted / measured on."""
    return {f"examples/ct/data/{name}": _sha256_file(EXAMPLE / "data" / name) for name in DATA_FILES}


def split_description(ct_data) -> dict:
    train, test, cross = ct_data.split_crops()
    return {
        "crop": list(ct_data.CROP), "spacing_mm": list(ct_data.SPACING),
        "train": f"{len(train)} crops of slices {list(ct_data.TRAIN_SLICES)} (half-open) of the NIfTI case "
                 "(abdomen_nifti), stride 1 x 8 x 8",
        "held_out_slab": f"{len(test)} crops of slices {list(ct_data.TEST_SLICES)} (half-open) of the same case, "
                         "stride 8 x 16 x 16: no voxel shared with training",
        "unseen_patient": f"{len(cross)} crops of the DICOM case (abdomen_dicom), stride 4 x 16 x 16",
        "counts": {"train": len(train), "held_out_slab": len(test), "unseen_patient": len(cross)},
    }


def _clean(report) -> dict:
    return {k: v for k, v in report.to_dict().items() if k != "history"}


def manifest_cases(modality: str) -> dict:
    """{sample id: Modality} of examples/ct/manifest.json, read as `mmtok encode` reads them."""
    manager = mmtok.get_plugin_manager()
    manifest = Manifest.load(EXAMPLE / "manifest.json")
    return {s.id: manifest.load_modality(s, modality, manager) for s in manifest.samples}


#: how much of each manifest case the CT codec saw in training
MANIFEST_ROLE = {"abdomen_nifti": "the training patient: slices 0-21 (at 3 mm) trained on, 22-29 held out",
                 "abdomen_dicom": "held out: the unseen patient (DICOM)"}


def fit_ct(directory: str):
    codec_name, overrides = CODECS[directory]
    ct_data = _ct_data()
    train, test, cross = ct_data.split_crops()
    manager = mmtok.get_plugin_manager()
    crop_overrides = {**overrides, "size": list(ct_data.CROP), "spacing_mm": list(ct_data.SPACING)}
    torch.manual_seed(SEED)  # the initial weights
    crop_codec = manager.build_codec(codec_name, crop_overrides)
    t0 = time.perf_counter()
    train_report = fit_codec(crop_codec, train.volume(), steps=CT_STEPS, batch_size=CT_BATCH, seed=SEED,
                             progress=False)
    fit_seconds = time.perf_counter() - t0
    crop_codec.eval()
    codec = manager.build_codec(codec_name, overrides)  # same weights at the whole-volume geometry
    codec.load_state_dict(crop_codec.state_dict())
    codec.eval()
    cases = manifest_cases("ct_volume")
    example = {sid: {"role": MANIFEST_ROLE.get(sid, "?"), **_clean(evaluate_codec(codec, m))}
               for sid, m in cases.items()}
    metrics = {
        "pretrained": f"ct/{directory}", "codec": codec_name, "config_overrides": overrides,
        "seed": SEED, "steps": CT_STEPS, "batch_size": CT_BATCH,
        "fitted_on": {"data": "examples/ct/data: TotalSegmentator test cases (CT + masks), "
                              "crops and split of examples/ct/ct_data.py (split_crops)",
                      "files": data_files(), "samples": len(train), **split_description(ct_data)},
        "weights": sum(t.numel() for t in codec.state_dict().values()),
        "fingerprint": codec.fingerprint(),
        "train": _clean(train_report),
        # HU on the codec's grid, clipped to the soft-tissue window (-160..240 HU)
        "test": {"held_out_slab": _clean(evaluate_codec(crop_codec, test.volume())),
                 "unseen_patient": _clean(evaluate_codec(crop_codec, cross.volume()))},
        "example_manifest": {"manifest": "examples/ct/manifest.json", "geometry": {k: overrides[k] for k in
                                                                               ("size", "patch", "spacing_mm")},
                             "num_tokens": codec.num_tokens, "cases": example},
        "fit_seconds": round(fit_seconds, 1),
    }
    return codec, metrics


def _report_scores(codec, texts: list[str]) -> dict:
    """OOV rate of the real tokens, reports truncated, exact round trips (decode == target)."""
    m = ReportText.from_texts(texts)
    ids = codec.preprocess(m)
    back = codec.decode(codec.encode(m))
    target = codec.reconstruction_target(m)
    spelled = [bytes(row[row > 0].tolist()).decode() for row in target]
    exact = sum(a == b for a, b in zip(back.texts(), spelled))
    truncated = sum(len(tokenize(t)) > codec.config.num_tokens for t in texts)
    return {"reports": len(texts), "distinct": len(set(texts)),
            "oov_rate": float(codec.reconstruction_loss(ids, ids)), "truncated": int(truncated),
            "exact_round_trip": exact / len(texts)}


def fit_words(directory: str):
    codec_name, overrides = CODECS[directory]
    ct_data = _ct_data()
    train, test, cross = ct_data.split_crops()
    torch.manual_seed(SEED)
    codec = mmtok.get_plugin_manager().build_codec(codec_name, overrides)
    codec.fit_statistics(ReportText.from_texts(train.reports))
    codec.eval()
    reports = manifest_cases("report_text")
    words = [w for w in codec.words() if w]
    metrics = {
        "pretrained": f"ct/{directory}", "codec": codec_name, "config_overrides": overrides,
        "seed": SEED, "steps": 0,
        "fitted_on": {"data": "the templated findings reports (mmtok_plugin_ct.reports, generated from the "
                              "TotalSegmentator masks: no radiology report exists) of the training crops of "
                              "examples/ct/ct_data.py (split_crops)",
                      "files": data_files(), "samples": len(train), **split_description(ct_data)},
        "words_in_vocabulary": len(words),
        "fingerprint": codec.fingerprint(),
        "train": _report_scores(codec, train.reports),
        "test": {"held_out_slab": _report_scores(codec, test.reports),
                 "unseen_patient": _report_scores(codec, cross.reports)},
        "example_manifest": {"manifest": "examples/ct/manifest.json",
                             "cases": {sid: _report_scores(codec, m.texts()) for sid, m in reports.items()}},
    }
    return codec, metrics


def _mask_scores(codec, m) -> dict:
    """Fraction of voxels whose region group is not their patch's dominant one; region tokens used."""
    off, used = 0.0, set()
    for start in range(0, len(m), 128):  # one-hot compositions of thousands of crops do not fit at once
        comp = codec.preprocess(m[start:start + 128])
        off += float(codec.reconstruction_loss(comp, comp)) * comp.shape[0]
        used |= set(comp.argmax(-1).unique().tolist())
    return {"samples": len(m), "voxel_mismatch": off / len(m), "codes_used": len(used),
            "vocab_size": codec.vocab_size}


def fit_mask(directory: str):
    codec_name, overrides = CODECS[directory]
    ct_data = _ct_data()
    train, test, cross = ct_data.split_crops()
    manager = mmtok.get_plugin_manager()
    codec = manager.build_codec(codec_name, overrides)
    assert not codec.state_dict(), f"{codec_name} has state: fit it"
    crop = manager.build_codec(codec_name, {**overrides, "size": list(ct_data.CROP)})
    metrics = {
        "pretrained": f"ct/{directory}", "codec": codec_name, "config_overrides": overrides,
        "seed": SEED, "steps": 0,
        "state": "none: no weights or buffers, nothing fitted; shipped so that a registry stream can "
                 "name it as checkpoint (mmtok encode requires one for every stream)",
        "fitted_on": {"data": "nothing (stateless); measured on the TotalSegmentator masks of examples/ct/data",
                      "files": data_files(), "samples": 0, **split_description(ct_data)},
        "fingerprint": codec.fingerprint(),
        "train": "none: nothing is fitted (the scores of its 5974 crops would take a minute to compute)",
        "test": {"held_out_slab": _mask_scores(crop, test.mask()),
                 "unseen_patient": _mask_scores(crop, cross.mask())},
        "example_manifest": {"manifest": "examples/ct/manifest.json", "num_tokens": codec.num_tokens,
                             "cases": {sid: _mask_scores(codec, m)
                                       for sid, m in manifest_cases("anatomy_mask").items()}},
    }
    return codec, metrics


def fit_one(directory: str):
    """(fitted codec, metrics dict) of one pretrained codec; writes nothing."""
    t0 = time.perf_counter()
    fit = {"ct-volume-fsq": fit_ct, "report-words": fit_words, "anatomy-mask-regions": fit_mask}
    codec, metrics = fit[CODECS[directory][0]](directory)
    metrics.update({"seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
                    "machine": platform.machine(), "threads": torch.get_num_threads()})
    return codec, metrics


def row(directory: str, codec, metrics: dict) -> str:
    t = metrics["test"]
    if metrics["codec"] == "ct-volume-fsq":
        cases = metrics["example_manifest"]["cases"]
        held = (f"held-out slab RMSE {t['held_out_slab']['rmse']:.1f} HU (nRMSE {t['held_out_slab']['nrmse']:.2f}), "
                f"unseen patient {t['unseen_patient']['rmse']:.1f} HU ({t['unseen_patient']['nrmse']:.2f}); "
                + ", ".join(f"{sid} whole {c['rmse']:.1f} HU ({c['nrmse']:.2f})" for sid, c in cases.items()))
    elif metrics["codec"] == "anatomy-mask-regions":
        held = (f"voxels off their patch's dominant region: held-out slab {t['held_out_slab']['voxel_mismatch']:.3f}, "
                f"unseen patient {t['unseen_patient']['voxel_mismatch']:.3f} (stateless: nothing fitted)")
    else:
        held = (f"OOV held-out slab {t['held_out_slab']['oov_rate']:.4f}, unseen patient "
                f"{t['unseen_patient']['oov_rate']:.4f}; exact round trip "
                f"{t['held_out_slab']['exact_round_trip']:.2f} / {t['unseen_patient']['exact_round_trip']:.2f}")
    return (f"| `ct/{directory}` | `{metrics['codec']}` | {codec.num_tokens} | {codec.vocab_size} | "
            f"{metrics['fitted_on']['samples'] or 'no'} training crops | {held} |")


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
            size = sum(p.stat().st_size for p in (args.out / directory).iterdir())
            print(f"ct/{directory}: sha256 {digest}, {size / 1e3:.0f} kB", flush=True)
        rows.append(row(directory, codec, metrics))
    print(f"\nfitted in {time.perf_counter() - t0:.1f} s; "
          f"{'nothing written (--check)' if args.check else f'saved to {args.out}'}\n")
    print("| pretrained | codec | tokens | vocab | fitted on | held-out |")
    print("|---|---|---:|---:|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

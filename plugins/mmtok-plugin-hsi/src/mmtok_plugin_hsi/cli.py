"""``mmtok hsi``: pretrain guided SpectralGPT, probe a run on any labelled cube, run the experiments.

    mmtok hsi pretrain --cube scene.mat --out runs/hsi/my_run --steps 600
    mmtok hsi probe runs/hsi/my_run --cube scene.mat --labels scene_gt.mat --split spatial
    mmtok hsi indian-pines --out runs/hsi/indian_pines
    mmtok hsi ablation --out runs/hsi/houston        mmtok hsi jasper --out runs/hsi/jasper
    mmtok hsi baselines --out runs/hsi/baselines

Registered through the ``mmtok_commands`` hook (`COMMAND`). Cubes are read by the installed
readers (``.mat``, ENVI ``.hdr``, ``.npy`` / ``.npz``) and resampled onto the run's wavelength
grid; labels are a 2-D integer map on the cube's grid, 0 = unlabelled. Bad input raises
`mmtok.MmtokError`, which the ``mmtok`` command prints as one line.
"""

import argparse
import sys
from pathlib import Path

from mmtok import CommandSpec, MmtokError

__all__ = ["COMMAND", "configure", "main", "read_cube", "read_label_map"]

#: the model grid of `mmtok hsi pretrain` unless --grid-nm says otherwise (AVIRIS range, 192 bands)
DEFAULT_GRID = (400.0, 2500.0, 192)


# ---------------------------------------------------------------------------------------------- input files
def _read_record(path: Path) -> dict:
    from mmtok import get_plugin_manager

    if not path.exists():
        raise MmtokError(f"{path}: no such file")
    return dict(get_plugin_manager().reader_for(path).read(path))


def _read_wavelengths(path: Path):
    import numpy as np

    if path.suffix.lower() in (".npy", ".npz", ".mat", ".hdr"):
        record = _read_record(path)
        arrays = [np.asarray(v) for v in record.values() if np.asarray(v).ndim == 1 and np.asarray(v).size > 1]
        if len(arrays) != 1:
            raise MmtokError(f"{path}: --wavelengths needs exactly one 1-D array, found {sorted(record)}")
        return arrays[0].astype(np.float64)
    try:
        return np.loadtxt(path, delimiter="," if path.suffix.lower() == ".csv" else None, dtype=np.float64).ravel()
    except ValueError as err:
        raise MmtokError(f"{path}: --wavelengths: not a list of numbers ({err})") from None


def read_cube(path: Path, wavelengths: Path | None = None):
    """`HSICube` (batch 1) of a cube file in any supported format; ``wavelengths``: a file with the
    band centres in nm (text / csv / npy), for cube files without a wavelength table."""
    from mmtok_plugin_hsi.modalities import HSICube

    path = Path(path)
    record = _read_record(path)
    if wavelengths is not None:
        for key in ("wavelength_nm", "wavelength", "wavelengths"):
            record.pop(key, None)
        record["wavelength_nm"] = _read_wavelengths(Path(wavelengths))
    return HSICube.from_record(record, sample_id=path.name)


def read_label_map(path: Path, key: str | None = None):
    """The (h, w) int64 label map of a label file (.npy / .npz / .mat ...): ``key``, or the one 2-D
    integer array of the file (2-D float arrays with integral values count when there is no
    integer one). 0 = unlabelled."""
    import numpy as np

    path = Path(path)
    record = _read_record(path)
    if key is not None:
        if key not in record:
            raise MmtokError(f"{path}: --labels-key {key!r} not found; the file holds {sorted(record)}")
        chosen = key
    else:
        arrays = {k: np.asarray(v) for k, v in record.items() if np.asarray(v).ndim == 2}
        ints = [k for k, a in arrays.items() if a.dtype.kind in "iub"]
        floats = [k for k, a in arrays.items() if a.dtype.kind == "f" and np.isfinite(a).all()
                  and np.array_equal(a, np.round(a))]
        candidates = ints or floats
        if len(candidates) != 1:
            found = ", ".join(f"{k} {arrays[k].shape} {arrays[k].dtype}" for k in sorted(arrays)) or "none"
            raise MmtokError(f"{path}: labels: expected one 2-D integer array (h, w), found "
                             f"{len(candidates)} (2-D arrays: {found}); name one with --labels-key")
        chosen = candidates[0]
    labels = np.asarray(record[chosen])
    if labels.ndim != 2:
        raise MmtokError(f"{path}: labels {chosen!r}: expected a 2-D (h, w) label map, found shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not (np.isfinite(labels).all() and np.array_equal(labels, np.round(labels))):
            raise MmtokError(f"{path}: labels {chosen!r}: expected integer class labels, found non-integer values")
    elif labels.dtype.kind not in "iub":
        raise MmtokError(f"{path}: labels {chosen!r}: expected integers, found dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise MmtokError(f"{path}: labels {chosen!r}: expected labels >= 0 (0 = unlabelled), found {labels.min()}")
    return labels


def _on_grid(cube, grid_nm: tuple[float, float, int], what: str):
    """(bands, h, w) float32 numpy of the cube resampled onto the grid (its valid bands only)."""
    from mmtok_plugin_hsi.preprocessing import coverage_problem, resample_bands, uniform_grid

    lo, hi, bands = grid_nm
    grid = uniform_grid(lo, hi, int(bands))
    tolerance = 2.0 * (hi - lo) / max(1, int(bands) - 1)
    problem = coverage_problem(cube.wavelength_nm, cube.band_mask, lo, hi, tolerance)
    if problem is not None:
        raise MmtokError(f"{what}: the cube does not cover the model grid {lo:g}-{hi:g} nm: {problem}"
                         + (" (pretrain with --grid-nm START,STOP to match the cube)" if what == "--cube" else ""))
    return resample_bands(cube.reflectance, cube.wavelength_nm, grid, cube.band_mask)[0].numpy()


def _grid_arg(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,STOP in nm (e.g. 400,2500), found {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected START < STOP, found {text!r}")
    return lo, hi


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None


# ---------------------------------------------------------------------------------------------- pretrain
def _pretrain(args) -> None:
    import numpy as np
    import torch
    from pydantic import ValidationError

    from mmtok_plugin_hsi.chips import extract_chips
    from mmtok_plugin_hsi.model import GuidedSpectralGPTConfig
    from mmtok_plugin_hsi.pretrain import PretrainConfig, pretrain, save_run

    grid = (*args.grid_nm, args.bands)
    try:
        model_cfg = GuidedSpectralGPTConfig(bands=args.bands, size=args.chip, mask_ratio=args.mask_ratio,
                                            dim=args.dim, depth=args.depth, heads=args.heads)
        cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    except ValidationError as err:
        raise MmtokError(f"hsi pretrain: {' '.join(str(err).split())[:400]}") from None
    if args.chip % 2 != 1:
        raise MmtokError(f"--chip: expected an odd size (the pixel at the centre), found {args.chip}")
    cube = read_cube(Path(args.cube), Path(args.wavelengths) if args.wavelengths else None)
    x = _on_grid(cube, grid, "--cube")
    h, w = x.shape[1:]
    centres = np.arange(h * w)
    if len(centres) > args.max_chips:
        centres = np.sort(np.random.default_rng(args.seed).choice(len(centres), args.max_chips, replace=False))
    chips = torch.from_numpy(extract_chips(x, centres // w, centres % w, args.chip))
    if not args.quiet:
        print(f"{Path(args.cube).name}: {cube.reflectance.shape[1]} bands, {h} x {w} px -> {len(chips)} chips of "
              f"{grid[2]} bands x {args.chip} x {args.chip} px ({grid[0]:g}-{grid[1]:g} nm)", file=sys.stderr)
    model, history = pretrain(chips, cfg, model=model_cfg, progress=not args.quiet)
    save_run(Path(args.out), model, cfg, history,
             extra={"grid_nm": list(grid), "chip": args.chip, "cube": str(args.cube), "pretraining_chips": len(chips),
                    "scene_shape": [h, w]})
    print(f"wrote {args.out}: {len(chips)} chips, {cfg.steps} steps, final MAE loss {history['mae'][-1]:.4f}, "
          f"{history['seconds']:.1f} s ({history['patches_per_s']:.0f} patches/s)")


# ---------------------------------------------------------------------------------------------- probe
def _check_classes(labels, min_pixels: int = 2) -> None:
    import numpy as np

    counts = np.bincount(labels.ravel())
    if counts[1:].sum() == 0:
        raise MmtokError("--labels: the label map has no labelled pixel (every value is 0 = unlabelled)")
    present = np.flatnonzero(counts[1:]) + 1
    few = [int(c) for c in present if counts[c] < min_pixels]
    if few:
        raise MmtokError(f"--labels: class {few[0]} has {counts[few[0]]} labelled pixel(s); the split needs at least "
                         f"{min_pixels} per class (one to train, one to test); relabel or drop it (classes with too "
                         f"few: {few})")
    if len(present) < 2:
        raise MmtokError(f"--labels: expected at least 2 classes, found {len(present)} ({present.tolist()})")


def _probe(args) -> None:
    import numpy as np

    from mmtok_plugin_hsi.baselines import fit_svm
    from mmtok_plugin_hsi.chips import extract_chips
    from mmtok_plugin_hsi.metrics import classification_report
    from mmtok_plugin_hsi.pretrain import load_run
    from mmtok_plugin_hsi.probe import embed_chips, linear_probe
    from mmtok_plugin_hsi.splits import random_per_class, spatially_disjoint

    model, norm, record = load_run(Path(args.run))
    grid = tuple(record.get("grid_nm", DEFAULT_GRID))
    chip = int(model.config.size)
    cube = read_cube(Path(args.cube), Path(args.wavelengths) if args.wavelengths else None)
    labels = read_label_map(Path(args.labels), args.labels_key)
    h, w = cube.reflectance.shape[2:]
    if labels.shape != (h, w):
        raise MmtokError(f"--labels: the label map is {labels.shape[0]} x {labels.shape[1]} px, the cube "
                         f"{h} x {w} px: expected one label per cube pixel on the same grid")
    _check_classes(labels)
    if args.split == "random":
        tr, te = random_per_class(labels, args.fraction, seed=args.seed, min_per_class=1)
        what = f"random {args.fraction:.0%} per class, seed {args.seed}"
    else:
        tr, te, _ = spatially_disjoint(labels, chip_size=chip, block=args.block, seed=args.seed)
        what = f"spatially disjoint ({args.block} px blocks, {chip - 1} px gap for {chip} px chips), seed {args.seed}"
    if len(tr) == 0 or len(te) == 0:
        raise MmtokError(f"--split {args.split}: the split left {len(tr)} training and {len(te)} test pixels; "
                         "the scene is too small for it (try --split random or a smaller --block)")
    flat = labels.ravel()
    missing = sorted(set(np.unique(flat[te]).tolist()) - set(np.unique(flat[tr]).tolist()))
    if len(np.unique(flat[tr])) < 2:
        raise MmtokError(f"--split {args.split}: the training pixels hold one class only "
                         f"({np.unique(flat[tr]).tolist()}); try --split random or a smaller --block")
    x = _on_grid(cube, grid, "--cube")
    chips_tr = extract_chips(x, tr // w, tr % w, chip)
    chips_te = extract_chips(x, te // w, te % w, chip)
    nc = int(flat.max()) + 1
    progress = not args.quiet
    f_tr = embed_chips(model, chips_tr, norm, progress=progress, desc="embed train")
    f_te = embed_chips(model, chips_te, norm, progress=progress, desc="embed test")
    rows = [("linear probe on the run's HSI-only embeddings",
             classification_report(flat[te], linear_probe(f_tr, flat[tr], f_te, seed=args.seed), nc))]
    raw = cube.reflectance[0].numpy().reshape(cube.reflectance.shape[1], -1)
    if cube.band_mask is not None:
        raw = raw[cube.band_mask[0].numpy()]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # small problems: BLAS threads only contend
        pred, _ = fit_svm(raw[:, tr].T, flat[tr], raw[:, te].T, seed=args.seed, n_jobs=1)
    rows.append((f"SVM (RBF) on the raw spectra ({raw.shape[0]} bands)", classification_report(flat[te], pred, nc)))
    classes = np.unique(flat[flat > 0])
    print(f"{Path(args.cube).name}: {h} x {w} px, {int((flat > 0).sum())} labelled pixels, {len(classes)} classes; "
          f"split {what}: {len(tr)} train / {len(te)} test pixels; run {args.run}")
    if missing:
        print(f"note: classes {missing} have test pixels but no training pixel (their test pixels count as errors)")
    print("| method | OA (%) | AA (%) | κ |\n|---|---:|---:|---:|")
    for name, rep in rows:
        print(f"| {name} | {100 * rep['oa']:.2f} | {100 * rep['aa']:.2f} | {rep['kappa']:.4f} |")
    if args.json:
        from mmtok import write_json

        write_json(Path(args.json), {"split": args.split, "seed": args.seed, "n_train": int(len(tr)),
                                     "n_test": int(len(te)), "run": str(args.run),
                                     "results": {name: {k: rep[k] for k in ("oa", "aa", "kappa", "per_class")}
                                                 for name, rep in rows}})


# ---------------------------------------------------------------------------------------------- experiments
def _indian_pines(args) -> None:
    from mmtok_plugin_hsi.indian_pines import run_indian_pines

    result = run_indian_pines(Path(args.out), steps=args.steps, random_steps=args.random_steps,
                              batch_size=args.batch_size, seeds=args.seeds,
                              protocols=tuple(p.strip() for p in args.protocols.split(",") if p.strip()),
                              finetune_steps=args.finetune_steps, threads=args.threads, progress=not args.quiet,
                              log=(lambda *a: None) if args.quiet else (lambda m: print(m, file=sys.stderr)))
    print(result["markdown"])


def _import(module: str, function: str):
    import importlib

    try:
        mod = importlib.import_module(f"mmtok_plugin_hsi.{module}")
    except ModuleNotFoundError as err:
        if err.name == f"mmtok_plugin_hsi.{module}":
            raise MmtokError(f"mmtok_plugin_hsi.{module} is not installed in this version of the plugin") from None
        raise
    if not hasattr(mod, function):
        raise MmtokError(f"mmtok_plugin_hsi.{module} has no {function}() in this version of the plugin")
    return getattr(mod, function)


def _given(args, *names) -> dict:
    """The options the user gave (None = the experiment's own default)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _ablation(args) -> None:
    run_ablation = _import("houston", "run_ablation")
    result = run_ablation(Path(args.out), progress=not args.quiet, **_given(args, "steps", "seeds", "threads"))
    print(result.get("markdown", ""))


def _jasper(args) -> None:
    run_jasper = _import("jasper", "run_jasper")
    result = run_jasper(Path(args.out), progress=not args.quiet, **_given(args, "steps", "seed", "threads"))
    print(result.get("markdown", ""))


def _baselines(args) -> None:
    run_baselines = _import("baselines", "run_baselines")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_baselines(out / "baselines.json", seeds=args.seeds,
                  log=(lambda *a: None) if args.quiet else (lambda m: print(m, file=sys.stderr)))
    print(f"wrote {out / 'baselines.json'}")


# ---------------------------------------------------------------------------------------------- parser
def configure(parser: argparse.ArgumentParser) -> None:
    """The ``hsi`` command's subcommands: pretrain | probe | indian-pines | ablation | jasper | baselines."""
    sub = parser.add_subparsers(dest="hsi_command", required=True,
                                metavar="{pretrain,probe,indian-pines,ablation,jasper,baselines}")

    p = sub.add_parser("pretrain", help="self-supervised guided-SpectralGPT pretraining (MAE) on one cube file")
    p.add_argument("--cube", required=True, help="cube file: .mat, ENVI .hdr, .npy / .npz")
    p.add_argument("--wavelengths", help="band centres in nm (text / csv / npy), if the cube file has none")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chip", type=int, default=9, help="chip side in px (odd, a multiple of the 3 px patch)")
    p.add_argument("--mask-ratio", type=float, default=0.9)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--bands", type=int, default=DEFAULT_GRID[2], help="bands of the model grid (multiple of 12)")
    p.add_argument("--grid-nm", type=_grid_arg, default=DEFAULT_GRID[:2], metavar="START,STOP",
                   help="wavelength range of the model grid in nm (default 400,2500)")
    p.add_argument("--max-chips", type=int, default=20000, help="pretrain on a random subset of this many pixels' chips")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice; 1 on a busy machine)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("probe", help="OA / AA / kappa of a linear probe on a run's HSI-only embeddings vs SVM "
                                     "on raw spectra, for any cube + label map")
    p.add_argument("run", help="a run folder of `mmtok hsi pretrain` (or of the experiments)")
    p.add_argument("--cube", required=True, help="cube file: .mat, ENVI .hdr, .npy / .npz")
    p.add_argument("--wavelengths", help="band centres in nm (text / csv / npy), if the cube file has none")
    p.add_argument("--labels", required=True, help="label map (h, w) integers, 0 = unlabelled: .npy / .npz / .mat")
    p.add_argument("--labels-key", help="the array of the label file to use (default: its one 2-D integer array)")
    p.add_argument("--split", choices=("random", "spatial"), default="random")
    p.add_argument("--fraction", type=float, default=0.1, help="random split: training fraction per class")
    p.add_argument("--block", type=int, default=24, help="spatial split: block side in px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice; 1 on a busy machine)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_probe)

    p = sub.add_parser("indian-pines", help="Indian Pines: both protocols, probe + fine-tune + baselines, figures")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=600, help="pretraining steps per seed and protocol")
    p.add_argument("--random-steps", type=int, help="pretraining steps of protocol (a) if different from --steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="comma-separated, e.g. 0,1,2")
    p.add_argument("--protocols", default="spatial,random", help="spatial (disjoint), random (10 %% per class)")
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_indian_pines)

    p = sub.add_parser("ablation", help="Houston 2013: pretraining with / without / with 50 %% LiDAR guidance")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, help="pretraining steps per arm and seed (default: the experiment's)")
    p.add_argument("--seeds", type=_ints, help="comma-separated (default 0,1,2)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_ablation)

    p = sub.add_parser("jasper", help="Jasper Ridge: held-out MAE reconstruction vs PCA, abundances vs FCLS")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, help="pretraining steps (default: the experiment's)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_jasper)

    p = sub.add_parser("baselines", help="classical baselines on the shipped scenes (SVM, PCA + SVM, FCLS, PCA)")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=_ints, default=(0, 1, 2))
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_baselines)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand (bad input raises `MmtokError`: one line from ``mmtok``)."""
    if getattr(args, "threads", None) and args.hsi_command in ("pretrain", "probe"):
        import torch

        torch.set_num_threads(args.threads)
    args.fn(args)
    return 0


COMMAND = CommandSpec("hsi", help="hyperspectral: pretrain guided SpectralGPT, probe a run on any labelled cube, "
                                  "Indian Pines / Houston / Jasper Ridge experiments",
                      configure=configure, description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    """``python -m mmtok_plugin_hsi.cli``: the same parser as ``mmtok hsi``, errors as one line."""
    parser = argparse.ArgumentParser(prog="mmtok hsi", description=COMMAND.description)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MmtokError as err:
        print(f"mmtok: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

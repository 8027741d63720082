"""``mmtok medimg``: train, evaluate, sample and classify with the modality-separating VAEs.

    mmtok medimg train --out runs/medimg/dvae --model disentangled --steps 1500
    mmtok medimg evaluate runs/medimg/dvae --out runs/medimg/dvae/eval
    mmtok medimg sample runs/medimg/dvae --modality xray --modality pathology -n 8 --out samples.png
    mmtok medimg classify scan.dcm photo.jpg                  # the VAE shipped inside the wheel
    mmtok medimg compare --seeds 0 1 2 --steps 1500 --out results   # baseline vs disentangled vs options

Registered through the ``mmtok_commands`` hook (`COMMAND`). Training and evaluation use the
plugin's real data set (`mmtok_plugin_medimg.datasets.build_dataset`, split by source). Image
files of any supported format are read by `mmtok_plugin_medimg.preprocessing.load_image`. Bad
input raises `mmtok.MmtokError`, which the ``mmtok`` command prints as one line.
"""

import argparse
import json
import sys
from pathlib import Path

from mmtok import CommandSpec, MmtokError

__all__ = ["COMMAND", "configure", "load_model", "shipped_model"]

#: the VAE shipped inside the wheel (a `medimg-vae-fsq` codec checkpoint; `.vae` is the model)
SHIPPED = "disentangled-vae-fsq"


def shipped_model():
    """The pretrained disentangled VAE inside the package (safetensors + JSON)."""
    from mmtok_plugin_medimg.codecs import ModalityVAECodec
    from mmtok_plugin_medimg.plugin import PRETRAINED

    path = PRETRAINED / SHIPPED
    if not (path / "config.json").is_file():
        raise MmtokError(f"the shipped model is missing from {path}; reinstall mmtok-plugin-medimg, or pass --run")
    return ModalityVAECodec.from_pretrained(path).vae.eval()


def load_model(run: Path | None):
    """A trained VAE: a run folder of `mmtok medimg train`, or the shipped one (None)."""
    if run is None:
        return shipped_model()
    from mmtok_plugin_medimg.model import load_vae

    run = Path(run)
    if not (run / "config.json").is_file():
        raise MmtokError(f"{run}: not a run of `mmtok medimg train` (no config.json)")
    return load_vae(run).eval()


def _train(args) -> int:
    from mmtok_plugin_medimg.experiments import train_variant
    from mmtok_plugin_medimg.datasets import build_dataset

    data = build_dataset(size=args.size, channels=args.channels)
    model, history = train_variant(data, args.model, seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                                   threads=args.threads, progress=True)
    out = Path(args.out)
    model.save(out)
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    print(f"{args.model}: {args.steps} steps on {len(data.subset('train'))} training images; saved {out}")
    return 0


def _evaluate(args) -> int:
    from mmtok_plugin_medimg.experiments import evaluate_model

    model = load_model(Path(args.run))
    metrics = evaluate_model(model, out=Path(args.out) if args.out else None, figures=bool(args.out))
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"{key:36s} {value:.4f}")
    return 0


def _sample(args) -> int:
    import torch

    from mmtok_plugin_medimg.figures import plot_conditional_samples

    model = load_model(Path(args.run) if args.run else None)
    known = list(model.config.modalities)
    wanted = args.modality or known
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise MmtokError(f"--modality {unknown}: this model knows {known}")
    g = torch.Generator().manual_seed(args.seed)
    samples = {m: model.sample(torch.full((args.n,), known.index(m), dtype=torch.long), args.n, g) for m in wanted}
    plot_conditional_samples(samples, Path(args.out), title=f"conditional samples ({Path(args.run).name if args.run else 'shipped model'})")
    print(f"wrote {args.out}: {args.n} samples for each of {', '.join(wanted)}")
    return 0


def _classify(args) -> int:
    import torch

    from mmtok_plugin_medimg.preprocessing import load_image, to_model_input

    model = load_model(Path(args.run) if args.run else None)
    c = model.config
    for path in args.images:
        images = load_image(Path(path))
        x = to_model_input(images, size=(c.image_size, c.image_size), channels=c.channels)
        with torch.no_grad():
            pred, dist = model.classify(x)
        for i, (p, d) in enumerate(zip(pred.tolist(), dist.tolist())):
            frame = f" frame {i}" if len(images) > 1 else ""
            told = images.labels[i]
            note = f" (file says {told})" if told is not None else ""
            print(f"{path}{frame}: {c.modalities[p]}  distance {d:.2f}{note}")
    return 0


def _compare(args) -> int:
    from mmtok_plugin_medimg.experiments import run_comparison
    from mmtok_plugin_medimg.variants import VARIANTS

    if args.merge:
        import json as _json

        from mmtok_plugin_medimg.experiments import write_report

        reports = []
        for d in args.merge:
            path = Path(d) / "comparison.json"
            if not path.is_file():
                raise MmtokError(f"--merge {d}: no comparison.json (a folder written by `mmtok medimg compare`)")
            reports.append(_json.loads(path.read_text()))
        write_report(Path(args.out), reports)
        print(f"merged {len(reports)} comparisons into {args.out}/comparison.md")
        return 0
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise MmtokError(f"--variants {unknown}: known variants are {list(VARIANTS)}")
    run_comparison(Path(args.out), seeds=args.seeds, steps=args.steps, variants=args.variants,
                   batch_size=args.batch_size, threads=args.threads, size=args.size)
    print(f"wrote {args.out}/comparison.md, comparison.json and figures/")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="medimg_command", required=True, metavar="COMMAND")
    from mmtok_plugin_medimg.variants import VARIANTS

    def training(p):
        p.add_argument("--steps", type=int, default=1500)
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        p.add_argument("--size", type=int, default=64, help="image size (64 default; 28 works)")

    p = sub.add_parser("train", help="train a VAE on the plugin's real images (training sources only)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="disentangled", choices=list(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, default=3, choices=[1, 3])
    training(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="latent separation, k-NN, reconstruction, generation on held-out sources")
    p.add_argument("run")
    p.add_argument("--out", default=None, help="folder for metrics.json and figures")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("sample", help="conditional samples: z_shared ~ N(0, I), the modality set, decoded")
    p.add_argument("run", nargs="?", default=None, help="run folder (default: the shipped model)")
    p.add_argument("--modality", action="append", default=None)
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="PNG grid")
    p.set_defaults(func=_sample)

    p = sub.add_parser("classify", help="predicted imaging modality of image files (any supported format)")
    p.add_argument("images", nargs="+")
    p.add_argument("--run", default=None, help="run folder (default: the VAE shipped in the wheel)")
    p.set_defaults(func=_classify)

    p = sub.add_parser("compare", help="baseline vs disentangled VAE vs the seed's options, over seeds")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="merge the comparisons of these folders (variants run in parallel) into --out")
    training(p)
    p.set_defaults(func=_compare)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmtok medimg")
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MmtokError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


COMMAND = CommandSpec("medimg", "2D medical images: train / evaluate / sample / classify the modality-separating VAEs",
                      configure, description=__doc__)

"""``mmtok nir``: pretrain SpectralFM, run one calibration transfer, or the whole benchmark.

    mmtok nir pretrain --out runs/nir/spectralfm
    mmtok nir transfer --dataset corn --source m5 --target mp6 --property moisture --n-transfer 10 \
        --checkpoint runs/nir/spectralfm
    mmtok nir benchmark --out runs/nir/benchmark --checkpoint runs/nir/spectralfm

Registered through the ``mmtok_commands`` hook (`COMMAND`); ``mmtok-nir`` is a deprecated alias
(`main`) kept for one release.
"""

import argparse
import json
import sys
from pathlib import Path

from mmtok import CommandSpec, MmtokError

__all__ = ["COMMAND", "configure", "main"]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# the subcommands import their modules when they run: `mmtok --help` must stay fast
def _pretrain(args) -> None:
    from mmtok_plugin_nir.model.spectralfm import SpectralFMConfig
    from mmtok_plugin_nir.pretrain import PretrainConfig, pretrain

    model = {"cpu": SpectralFMConfig.cpu, "default": SpectralFMConfig, "card": SpectralFMConfig.card}[args.size]()
    datasets = PretrainConfig.datasets if args.datasets == "all" else tuple(_csv(args.datasets))
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         datasets=datasets, sampling_alpha=args.sampling_alpha, vib_weight=args.vib_weight,
                         kl_warmup=args.kl_warmup, free_bits=args.free_bits,
                         snapshot_steps=tuple(int(s) for s in _csv(args.snapshot_steps or "")),
                         checkpoint_every=args.checkpoint_every, model=model.to_dict())
    summary = pretrain(args.out, cfg, progress=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items() if k != "last"}, indent=1))


def _value(text: str):
    """A KEY=VALUE value: int, float, a tuple when it holds "/" (auto_heads=ridge/pls), else str."""
    text = text.strip()
    if "/" in text:
        return tuple(_value(t) for t in text.split("/") if t.strip())
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _key_values(text: str | None, flag: str = "--spectralfm") -> dict:
    """``ttt_steps=0,head=auto`` (the value of ``flag``) -> {"ttt_steps": 0, "head": "auto"}."""
    options = {}
    for item in _csv(text or ""):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag}: expected KEY=VALUE items, found {item!r}")
        options[key.strip()] = _value(value)
    return options


def _method_options(args) -> dict[str, dict]:
    """``--set cnn.epochs=100 --set spectralfm.head=auto`` (+ ``--spectralfm``) -> per-method options."""
    options: dict[str, dict] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not (sep and dot and method and name):
            raise ValueError(f"--set: expected METHOD.KEY=VALUE, found {item!r}")
        options.setdefault(method.strip(), {})[name.strip()] = _value(value)
    if args.spectralfm:
        options["spectralfm"] = {**options.get("spectralfm", {}), **_key_values(args.spectralfm)}
    return options


def _methods(args) -> list[str]:
    from mmtok_plugin_nir.benchmark import ALL_METHODS, PRETRAINED

    if args.method != "all":
        return _csv(args.method)
    return [m for m in ALL_METHODS if args.checkpoint or m not in PRETRAINED]


def _transfer(args) -> None:
    from mmtok_plugin_nir.benchmark import method_factory, min_pairs
    from mmtok_plugin_nir.datasets import load_dataset
    from mmtok_plugin_nir.protocol import TransferSetting, run_transfer

    data = load_dataset(args.dataset)
    prop = data.property_name(args.property)
    setting = TransferSetting(args.dataset, args.source, args.target, prop, args.n_transfer, args.repeats, args.seed)
    print(f"{args.dataset}: {args.source} -> {args.target}, {prop}, N = {args.n_transfer}, {args.repeats} repeats")
    print("| method | R² | RMSEP | RPD | bias |\n|---|---:|---:|---:|---:|")
    for method in _methods(args):
        factory = method_factory(method, data, Path(args.checkpoint) if args.checkpoint else None,
                                 **_method_options(args).get(method, {}))
        needed = min_pairs(factory)
        if args.n_transfer < needed:
            print(f"| {method} | needs N >= {needed} | | | |")
            continue
        s = run_transfer(data, setting, factory, method).summary()
        print(f"| {method} | {s['r2']:.3f} ± {s['r2_std']:.3f} | {s['rmsep']:.4f} ± {s['rmsep_std']:.4f} | "
              f"{s['rpd']:.2f} ± {s['rpd_std']:.2f} | {s['bias']:+.4f} ± {s['bias_std']:.4f} |", flush=True)


def _benchmark(args) -> None:
    from mmtok_plugin_nir.benchmark import run_benchmark

    pairs = [tuple(p.split("-")) for p in _csv(args.pairs)] if args.pairs else None
    run_benchmark(args.out, args.dataset, _methods(args), [int(n) for n in _csv(args.n_values)], pairs,
                  _csv(args.properties) if args.properties else None, args.repeats,
                  Path(args.checkpoint) if args.checkpoint else None, seed=args.seed, progress=not args.quiet,
                  method_options=_method_options(args),
                  method_repeats={k: int(v) for k, v in _key_values(args.repeats_of, "--repeats-of").items()})
    print(f"wrote {Path(args.out) / 'report.md'} and {Path(args.out) / 'rmsep_vs_n.png'}")


def configure(parser: argparse.ArgumentParser) -> None:
    """The ``nir`` command's arguments: the subcommands pretrain | transfer | benchmark."""
    sub = parser.add_subparsers(dest="nir_command", required=True, metavar="{pretrain,transfer,benchmark}")

    p = sub.add_parser("pretrain", help="self-supervised SpectralFM pretraining on the corpus: Corn + Tablet "
                                        "+ 9 spectra_more sources, NIR and IR (resumable)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=600, help="optimiser steps (default 600)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets", default="all",
                   help="'all' (the full corpus) or comma-separated sources: corn, tablet, fruit, octane, tecator, "
                        "gasoline, mayonnaise, yarn, fermentation, coffee, collagen")
    p.add_argument("--sampling-alpha", type=float, default=1.0,
                   help="each batch's source is drawn with probability ~ size**alpha (1: proportional, 0.5: tempered)")
    p.add_argument("--vib-weight", type=float, default=0.05, help="weight of the VIB KL (the card's 0.05)")
    p.add_argument("--kl-warmup", type=int, default=0, help="steps of a linear KL-weight ramp 0 -> --vib-weight")
    p.add_argument("--free-bits", type=float, default=0.1,
                   help="KL floor per latent dimension (nats), 0 = off (default 0.1: chosen by the calibration-pool "
                        "validation of the VIB ablation, see the README)")
    p.add_argument("--snapshot-steps", default="", help="e.g. 200,400: also save model_step{N}.safetensors")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--size", choices=("cpu", "default", "card"), default="cpu",
                   help="cpu: 1.8M parameters, patch 32, cheap scan (laptop); default: 2.0M, patch 16; "
                        "card: the card's ~10M parameters")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_pretrain)

    for name, fn, helptext in (("transfer", _transfer, "one transfer setting, every method (mean ± std)"),
                               ("benchmark", _benchmark, "every method x N x pair x property: report.md + PNG")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--dataset", default="corn", choices=("corn", "tablet"))
        p.add_argument("--method", default="all",
                       help="comma-separated names or 'all': pls-source, sbc, ds, pds, cca, dipls, cnn, transformer, "
                            "lora-ct, and with --checkpoint spectralfm, shared-model (default: all)")
        p.add_argument("--checkpoint", help="a pretrained SpectralFM run directory (mmtok nir pretrain --out DIR)")
        p.add_argument("--spectralfm", metavar="KEY=VALUE,...",
                       help="SpectralFMTransfer options, e.g. head=auto,features=tokens or ttt_steps=0")
        p.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE",
                       help="an option of one method, repeatable, e.g. --set pds.half_window=5 --set cnn.seed=1")
        p.add_argument("--repeats", type=int, default=10)
        p.add_argument("--seed", type=int, default=0)
        if name == "transfer":
            p.add_argument("--source", required=True)
            p.add_argument("--target", required=True)
            p.add_argument("--property", required=True)
            p.add_argument("--n-transfer", type=int, required=True)
        else:
            p.add_argument("--out", required=True)
            p.add_argument("--n-values", default="0,5,10,20,30,50")
            p.add_argument("--pairs", help="e.g. m5-mp6,mp5-mp6 (default: every pair)")
            p.add_argument("--properties", help="comma-separated (default: all)")
            p.add_argument("--repeats-of", metavar="METHOD=K,...",
                           help="fewer draws for expensive methods, e.g. shared-model=3,transformer=5 "
                                "(default: --repeats for every method)")
            p.add_argument("--quiet", action="store_true")
        p.set_defaults(fn=fn)
    parser.set_defaults(func=run, nir_prog=parser.prog)


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; bad input is one line on stderr and exit status 2."""
    try:
        args.fn(args)
    except (MmtokError, ValueError) as err:
        print(f"{args.nir_prog} {args.nir_command}: error: {err}", file=sys.stderr)
        return 2
    return 0


COMMAND = CommandSpec("nir", help="NIR calibration transfer: pretrain SpectralFM, transfer, benchmark",
                      configure=configure, description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    """``mmtok-nir``: deprecated alias of ``mmtok nir`` (same parser), kept for one release."""
    parser = argparse.ArgumentParser(prog="mmtok-nir", description=COMMAND.description)
    configure(parser)
    print("mmtok-nir is deprecated, use `mmtok nir` (same arguments)", file=sys.stderr)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The ``mmtok`` command line."""

import argparse
import json
import sys
from pathlib import Path

import torch

from mmtok.errors import MmtokError

__all__ = ["main"]


def cmd_plugins(args: argparse.Namespace) -> int:
    from mmtok.plugins import get_plugin_manager

    manager = get_plugin_manager()
    rows = [
        {"name": p.name, "package": p.package, "version": p.version, "disabled": p.disabled,
         "provides": p.provides, "errors": p.errors}
        for p in manager.plugins
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "disabled" if row["disabled"] else ("ERROR" if row["errors"] else "ok")
        print(f"{row['name']}  ({row['package'] or '?'} {row['version'] or '?'})  [{state}]")
        for kind, names in row["provides"].items():
            print(f"    {kind:<13} {', '.join(names)}")
        for err in row["errors"]:
            print(f"    error       {err}")
    return 0


def cmd_registry_check(args: argparse.Namespace) -> int:
    from mmtok.registry import Registry

    try:
        registry = Registry.load(args.registry)
        problems = registry.check()
    except MmtokError as err:
        print(err, file=sys.stderr)
        return 1
    for p in problems:
        print(f"{args.registry}: {p}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.registry}: {len(registry.streams)} streams, {len(registry.bundles)} bundles, all resolved")
    for key, entry in registry.streams.items():
        vocab = entry.vocab_size if entry.vocab_size is not None else "continuous"
        src = f"  checkpoint {entry.checkpoint}" if entry.checkpoint else ""
        print(f"  {key:<22} {entry.modality:<22} {entry.codec:<20} vocab {vocab:<6} "
              f"tokens {entry.num_tokens}{src}")
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from mmtok.scaffold import new_plugin

    root = new_plugin(args.name, args.dir)
    print(f"created {root}\nnext: pip install -e {root} && pytest {root / 'tests'}")
    return 0


def _shape_checker(registry_path: Path | None, modalities=None):
    """(stream problems, check_shape(key, modality)) against the registry's streams.

    Every stream whose modality is in ``modalities`` (all streams when None) has its codec built
    once, here: a codec that cannot be built (no checkpoint, a config that differs from it, a
    codec the plugins do not provide) is one problem ``(stream key, modality, reason)``, and its
    shape check is skipped for every sample instead of failing each one. ``check_shape`` raises
    an MmtokError on a shape a codec can't take (one problem per sample).
    """
    if registry_path is None:
        return [], None
    from mmtok.registry import Registry

    registry = Registry.load(registry_path)
    problems: list[tuple[str, str, str]] = []
    by_modality: dict[str, list] = {}
    for key, entry in registry.streams.items():
        if modalities is not None and entry.modality not in modalities:
            continue
        try:
            codec = registry.codec(key)
        except MmtokError as err:
            problems.append((key, entry.modality, str(err)))
            continue
        except Exception as err:  # noqa: BLE001 - e.g. an unreadable checkpoint: a problem, not a traceback
            problems.append((key, entry.modality, f"cannot build its codec: {type(err).__name__}: {err}"))
            continue
        by_modality.setdefault(entry.modality, []).append((key, codec))

    def check(modality_key: str, m) -> None:
        for key, codec in by_modality.get(modality_key, []):
            try:
                codec.preprocess(m)  # raises ModalityError on a shape the codec can't take
            except MmtokError as err:  # worded as `mmtok encode` words it
                raise MmtokError(f"stream {key!r}: {err}") from None

    return problems, check


def cmd_validate(args: argparse.Namespace) -> int:
    from collections import Counter

    from mmtok.manifest import Manifest, summarize

    manifest = Manifest.load(args.manifest, allow_absolute=args.allow_absolute)
    used = Counter(k for s in manifest.samples for k in s.modalities)
    stream_problems, check_shape = _shape_checker(args.registry, set(used))
    for key, modality, reason in stream_problems:  # once per stream, before the samples' problems
        print(f"{args.registry}: stream {key!r} ({modality}): {reason}; its shape checks are skipped "
              f"for the {used[modality]} sample(s) with {modality}", file=sys.stderr)
    problems = manifest.validate(check_shape=check_shape)
    for line in summarize(problems):  # a problem many samples share is one line with their count
        print(f"{args.manifest}: {line}", file=sys.stderr)
    n = len(manifest.samples) + len({p.sample for p in manifest.problems})
    if stream_problems or problems:
        registry = f"{len(stream_problems)} problem(s) in {args.registry}, " if stream_problems else ""
        print(f"{registry}{len(problems)} problem(s) in {n} samples", file=sys.stderr)
        return 1
    kinds = sorted({k for s in manifest.samples for k in s.modalities})
    print(f"{args.manifest}: {n} samples, modalities {', '.join(kinds)}: all valid")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from mmtok.encode import encode_manifest

    summary = encode_manifest(args.manifest, args.out, registry_path=args.registry,
                              batch_size=args.batch_size, workers=args.workers, on_error=args.on_error,
                              resume=args.resume, overwrite=args.overwrite, shard_size=args.shard_size,
                              streams=args.stream,
                              allow_absolute=args.allow_absolute, progress=not args.quiet)
    if summary is None:  # a non-zero rank under torchrun
        return 0
    print(f"encoded {summary.samples} samples into {summary.out} in {summary.seconds:.1f} s "
          f"({summary.samples / max(summary.seconds, 1e-9):.0f} samples/s)")
    print(summary.table())
    from mmtok.manifest import ManifestProblem, summarize

    problems = [ManifestProblem(s["id"], p["key"], p["reason"]) for s in summary.skipped for p in s["problems"]]
    for line in summarize(problems):  # a problem many samples share is one line with their count
        print(f"skipped {line}", file=sys.stderr)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np

    from mmtok.io import atomic_write
    from mmtok.registry import Registry
    from mmtok.shards import TokenShards

    shards = TokenShards(args.dir)
    stream = shards.stream(args.sample, args.stream)
    registry = Registry.load(args.registry or shards.index["registry"])
    codec = registry.codec(args.stream)
    if codec.fingerprint() != stream.fingerprint:
        raise MmtokError(f"stream {args.stream!r} was encoded by codec {stream.fingerprint}, but the "
                         f"registry now gives {codec.fingerprint()}; decode with the registry used "
                         "for encoding (--registry)")
    decoded = codec.decode(stream)
    array = getattr(decoded, codec.field)[0].numpy()
    out = Path(args.out)
    def write(p: Path) -> None:
        with open(p, "wb") as fh:  # np.save(path) would append ".npy" to the temporary name
            np.save(fh, array)

    atomic_write(out, write)
    print(f"{args.sample} {args.stream} -> {out} ({decoded.__class__.__name__}.{codec.field}, "
          f"shape {array.shape})")
    if args.manifest is not None:  # compare with the original, as the codec sees it
        from mmtok.fit import reconstruction_errors
        from mmtok.manifest import Manifest
        from mmtok.plugins import get_plugin_manager

        manifest = Manifest.load(args.manifest)
        sample = next((s for s in manifest.samples if s.id == args.sample), None)
        if sample is None:
            raise MmtokError(f"{args.manifest}: no sample {args.sample!r}")
        original = manifest.load_modality(sample, shards.streams[args.stream]["modality"], get_plugin_manager())
        target = codec.reconstruction_target(original).float()
        rebuilt = getattr(decoded, codec.field).float()
        rmse, nrmse, _ = reconstruction_errors(target, rebuilt)
        mae = float((target - rebuilt).abs().mean())
        relative = rmse / max(float(target.pow(2).mean().sqrt()), 1e-12)
        spread = f"nrmse {nrmse:.4g}" if nrmse == nrmse else "nrmse n/a (one value per channel)"
        print(f"reconstruction error vs {args.manifest.name}: rmse {rmse:.4g}, mae {mae:.4g} (units of "
              f"{type(original).__name__}.{codec.field}), relative rmse {relative:.4g} (rmse / rms of the original), "
              f"{spread}")
    return 0


def cmd_fit_codec(args: argparse.Namespace) -> int:
    """Refuse an existing codec folder without --force (token folders were encoded with it),
    and hold the folder's lock while fitting."""
    from mmtok.io import OutputLock

    out = Path(args.out)
    with OutputLock(out, "fit-codec"):
        if out.is_dir() and any(out.iterdir()) and not args.force:
            what = "a codec" if (out / "config.json").exists() else "files"
            raise MmtokError(f"{out} already holds {what}; token folders encoded with a codec stop decoding "
                             "when it is replaced. Choose another --out, or pass --force to replace it")
        return _fit_codec(args)


def _fit_codec(args: argparse.Namespace) -> int:
    from mmtok.fit import fit_codec
    from mmtok.manifest import Manifest, ManifestProblem, SampleError, summarize
    from mmtok.plugins import get_plugin_manager
    from mmtok.registry import Registry

    registry = Registry.load(args.registry)
    if args.stream not in registry.streams:
        raise MmtokError(f"no stream {args.stream!r} in {args.registry}; streams are {sorted(registry.streams)}")
    entry = registry.streams[args.stream]
    manager = get_plugin_manager()
    codec = manager.codec_spec(entry.codec).build(entry.config, modality=manager.modality(entry.modality))
    manifest = Manifest.load(args.manifest, allow_absolute=args.allow_absolute)
    items, problems = [], []
    for sample in manifest.samples:
        if entry.modality in sample.modalities:
            try:
                items.append(manifest.load_modality(sample, entry.modality, manager))
            except SampleError as err:
                problems.append(ManifestProblem(err.sample, err.key, err.reason))
    for line in summarize(problems):  # a problem many samples share is one line with their count
        print(f"{args.manifest}: {line}", file=sys.stderr)
    if problems:
        return 1
    if len(items) < 2:
        raise MmtokError(f"{args.manifest}: only {len(items)} sample(s) have {entry.modality!r}; "
                         "need at least 2 to fit a codec")
    shapes = {tuple(getattr(m, codec.field).shape[1:]) for m in items}
    if len(shapes) > 1:  # a codec that brings any input onto its own grid (images resized to 64 x 64) does so
        items = [codec.canonical(m) for m in items]
        shapes = {tuple(getattr(m, codec.field).shape[1:]) for m in items}
    if len(shapes) > 1:
        raise MmtokError(f"{entry.modality!r} samples have different shapes {sorted(shapes)}; "
                         "resample or crop them to one shape first")
    # optional fields (e.g. a variance some files lack) are dropped where not every sample has them
    partial = {f for f in codec.modality.tensor_fields()
               if f != codec.field and len({getattr(m, f) is None for m in items}) > 1}
    if partial:
        items = [m.replace(**{f: None for f in partial}) for m in items]
    data = codec.modality.collate(items)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))
    n_val = int(round(args.val_fraction * len(data)))
    val = data[perm[:n_val]] if n_val else None
    train = data[perm[n_val:]]
    report = fit_codec(codec, train, val=val, steps=args.steps, batch_size=args.batch_size,
                       lr=args.lr, seed=args.seed, progress=not args.quiet)
    out = codec.save_pretrained(args.out)
    from mmtok.io import write_json

    write_json(out / "metrics.json", {"train_samples": len(train), "val_samples": n_val, **report.to_dict()})
    print(f"{args.stream}: {report.summary()} ({'held-out' if n_val else 'training'} data, "
          f"{len(train)} train / {n_val} held-out samples)")
    print(f"wrote {out}; point registry.yaml at it:\n  {args.stream}:\n    checkpoint: {json.dumps(str(out))}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mmtok.train import TrainConfig, Trainer

    config = TrainConfig.load(args.config, max_steps=args.max_steps)
    trainer = Trainer(args.tokens, args.out, config, progress=not args.quiet)
    start = trainer.step
    records = trainer.fit()
    if trainer.dist.main:
        evals = [r for r in records if any(k.startswith("val/") for k in r)]
        print(f"trained steps {start}..{trainer.step} -> {args.out} (metrics.jsonl, checkpoints/)")
        if evals:
            last = evals[-1]
            print("| stream | held-out loss | accuracy | unigram loss | unigram accuracy |")
            print("|---|---:|---:|---:|---:|")
            for key in trainer.model.layout.keys:
                if f"val/loss/{key}" not in last:
                    continue
                acc = last.get(f"val/acc/{key}")
                fmt = (lambda v: "" if v is None else f"{v:.3f}")
                print(f"| {key} | {last[f'val/loss/{key}']:.3f} | {fmt(acc)} | "
                      f"{fmt(last.get(f'val/unigram_loss/{key}'))} | {fmt(last.get(f'val/unigram_acc/{key}'))} |")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from mmtok.inference import embed_tokens, save_tensors

    ids, pooled = embed_tokens(args.run, args.tokens, batch_size=args.batch_size, samples=args.sample)
    save_tensors(args.out, {"embedding": pooled}, ids)
    print(f"{len(ids)} samples -> {args.out} (embedding {tuple(pooled.shape)})")
    return 0


def cmd_impute(args: argparse.Namespace) -> int:
    from mmtok.inference import impute_tokens, save_tensors
    from mmtok.shards import TokenShards, tensor_names

    ids, pred = impute_tokens(args.run, args.tokens, args.stream, samples=args.sample, steps=args.steps)
    tensors = {tensor_names(args.stream, not pred.is_floating_point())[0]: pred}
    if args.decode:
        from mmtok.registry import Registry

        shards = TokenShards(args.tokens)
        info = shards.streams[args.stream]
        codec = Registry.load(args.registry or shards.index["registry"]).codec(args.stream)
        if codec.fingerprint() != info["fingerprint"]:
            raise MmtokError(f"the registry's codec for {args.stream!r} is not the one that encoded {args.tokens}")
        decoded = codec.decode(shards.make_stream(args.stream, pred))
        tensors[f"{args.stream}/decoded"] = getattr(decoded, codec.field).float()
    save_tensors(args.out, tensors, ids)
    print(f"imputed {args.stream} for {len(ids)} samples -> {args.out} ({', '.join(tensors)})")
    return 0


def _plugin_problem(manager, owner: str, problem: str) -> None:
    """Report a plugin command that can't be added: on stderr, and in `mmtok plugins`."""
    errors = manager.info[owner].errors if owner in manager.info else []
    if problem not in errors:
        errors.append(problem)
    print(f"mmtok: warning: plugin {owner!r}: {problem}", file=sys.stderr)


def _failing(message: str):
    def run(args: argparse.Namespace) -> int:
        print(f"mmtok {args.command}: error: {message}", file=sys.stderr)
        return 2

    return run


def add_plugin_commands(sub, manager=None) -> None:
    """One subparser per plugin command (`mmtok_commands`). A name that a built-in command has,
    or a ``configure`` that raises, is reported and skipped: `mmtok --help` always works."""
    if manager is None:
        try:
            from mmtok.plugins import get_plugin_manager

            manager = get_plugin_manager()
        except Exception as err:  # noqa: BLE001 - the built-in commands must work whatever a plugin does
            print(f"mmtok: warning: plugin commands not loaded: {type(err).__name__}: {err}", file=sys.stderr)
            return
    for spec in manager.commands():
        owner = manager.owner["commands"][spec.name]
        if spec.name in sub.choices:
            _plugin_problem(manager, owner, f"command {spec.name!r} clashes with a built-in mmtok command; "
                                            "this one is ignored")
            continue
        p = sub.add_parser(spec.name, help=spec.help, description=spec.description or spec.help)
        p.set_defaults(func=_failing(f"plugin {owner!r} set no func for this command"))
        try:
            spec.configure(p)
        except Exception as err:  # noqa: BLE001
            problem = f"command {spec.name!r}: configure(parser) raised {type(err).__name__}: {err}"
            _plugin_problem(manager, owner, problem)
            p.set_defaults(func=_failing(f"plugin {owner!r} is broken: {problem}"))


def build_parser(manager=None) -> argparse.ArgumentParser:
    """The ``mmtok`` parser: the built-in commands, then those of ``manager``'s plugins (default:
    the installed ones)."""
    from mmtok import __version__

    parser = argparse.ArgumentParser(prog="mmtok", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mmtok {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list plugins, their versions, what they provide, load errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("registry", help="registry.yaml tools")
    rsub = p.add_subparsers(dest="registry_command", required=True)
    c = rsub.add_parser("check", help="resolve every stream and bundle; non-zero exit on problems")
    c.add_argument("--registry", type=Path, default=Path("registry.yaml"))
    c.set_defaults(func=cmd_registry_check)

    p = sub.add_parser("validate", help="check a manifest without running codecs; one line per problem")
    p.add_argument("manifest", type=Path)
    p.add_argument("--registry", type=Path, default=None,
                   help="also check per-sample shapes against the registry's codecs")
    p.add_argument("--allow-absolute", action="store_true", help="permit absolute paths in the manifest")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("encode", help="manifest -> token shards (safetensors) + index")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--registry", type=Path, default=Path("registry.yaml"))
    p.add_argument("--stream", action="append", help="encode only these streams (repeatable)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1024, help="samples per shard")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for reading")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run in --out (finished shards are re-verified, damaged ones redone)")
    p.add_argument("--overwrite", action="store_true", help="replace the encode run already in --out")
    p.add_argument("--allow-absolute", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="tokens of one sample and stream -> .npy")
    p.add_argument("dir", type=Path, help="an `mmtok encode` output folder")
    p.add_argument("--sample", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--registry", type=Path, default=None, help="default: the one used for encoding")
    p.add_argument("--manifest", type=Path, default=None,
                   help="also report the reconstruction error against this manifest's original")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("fit-codec", help="train a stream's codec on the manifest's data")
    p.add_argument("manifest", type=Path)
    p.add_argument("--stream", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--registry", type=Path, default=Path("registry.yaml"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-absolute", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="replace the codec already in --out (token folders encoded with it stop decoding)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_fit_codec)

    p = sub.add_parser("train", help="train the shared masked transformer on token shards (torchrun-ready)")
    p.add_argument("--tokens", type=Path, required=True, help="an `mmtok encode` output folder")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumes if it holds a checkpoint)")
    p.add_argument("--config", type=Path, default=None, help="training config YAML (mmtok.train.TrainConfig)")
    p.add_argument("--max-steps", type=int, default=None, help="total optimizer steps (overrides the config)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="pooled encoder features of token samples -> safetensors")
    p.add_argument("run", type=Path, help="an `mmtok train` run folder")
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sample", action="append", default=None, help="sample id (repeatable); default all")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("impute", help="predict a stream from the others (default: where it is missing)")
    p.add_argument("run", type=Path, help="an `mmtok train` run folder")
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--out", type=Path, required=True, help="safetensors file of predicted tokens")
    p.add_argument("--sample", action="append", default=None, help="sample id (repeatable)")
    p.add_argument("--steps", type=int, default=8, help="MaskGIT decoding rounds")
    p.add_argument("--decode", action="store_true", help="also decode the tokens with the stream's codec")
    p.add_argument("--registry", type=Path, default=None, help="default: the one used for encoding")
    p.set_defaults(func=cmd_impute)

    p = sub.add_parser("new-plugin", help="scaffold a pip-installable plugin package")
    p.add_argument("name")
    p.add_argument("--dir", type=Path, default=Path("."))
    p.set_defaults(func=cmd_new_plugin)

    add_plugin_commands(sub, manager)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (e.g. a quantile fit losing bins to ties) as one `mmtok: warning:` line."""
    print(f"mmtok: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None, *, manager=None) -> int:
    import warnings

    args = build_parser(manager).parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            rc = args.func(args)
            return 0 if rc is None else rc
        except MmtokError as err:
            print(f"mmtok: {err}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())

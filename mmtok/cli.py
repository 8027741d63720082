"""The ``mmtok`` command line."""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from mmtok.errors import MmtokError

__all__ = ["main"]


def cmd_plugins(args: argparse.Namespace) -> int:
    from mmtok.plugins import get_plugin_manager

    if args.codecs:
        return _cmd_plugin_codecs(args)
    if args.registry is not None:
        raise MmtokError("--registry goes with --codecs (mmtok plugins --codecs --registry FILE)")
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


def _fitted_on(directory: Path | None) -> str:
    """What a codec checkpoint was fitted on: ``fitted_on`` of its metrics.json (or config.json),
    a string or {data, samples, split, held_out}; else the older ``data`` / ``split`` keys, else
    the sample counts `mmtok fit-codec` records; "" when the checkpoint says nothing."""
    if directory is None:
        return ""
    for name in ("metrics.json", "config.json"):
        try:
            meta = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict):
            continue
        found = meta.get("fitted_on")
        if isinstance(found, dict):
            parts = [str(found.get("data", "")), f"{found['samples']} samples" if "samples" in found else "",
                     str(found.get("split", ""))]
            return "; ".join(p for p in parts if p)
        if found:
            return str(found)
        if meta.get("data"):
            split = meta.get("split")
            split = ", ".join(f"{k}: {v}" for k, v in split.items()) if isinstance(split, dict) else split
            return "; ".join(str(p) for p in (meta["data"], split) if p)
        if "train_samples" in meta:
            return f"{meta['train_samples']} train / {meta.get('val_samples', 0)} held-out samples (mmtok fit-codec)"
    return ""


def _codec_rows(registry_path: Path | None) -> list[dict]:
    """One row per stream of the registry, or per shipped pretrained codec when there is none:
    codec, tokens, vocabulary, checkpoint and what it was fitted on (see `_fitted_on`)."""
    from mmtok.plugins import get_plugin_manager

    manager = get_plugin_manager()
    rows = []
    if registry_path is not None:
        from mmtok.registry import Registry

        registry = Registry.load(registry_path)
        for key, entry in registry.streams.items():
            row = {"stream": key, "codec": entry.codec, "num_tokens": entry.num_tokens,
                   "vocab_size": entry.vocab_size, "checkpoint": entry.checkpoint, "fitted_on": "", "error": None}
            try:
                codec = registry.codec(key)
                row.update(num_tokens=codec.num_tokens, vocab_size=codec.vocab_size)
                if entry.checkpoint:
                    row["fitted_on"] = _fitted_on(registry._checkpoint_dir(entry.checkpoint, manager))
                else:
                    row["fitted_on"] = "not fitted (no checkpoint)"
            except Exception as err:  # noqa: BLE001 - one broken stream is one row, not a traceback
                row["error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
        return rows
    for name in manager.names("pretrained"):
        spec = manager.pretrained(name)
        row = {"pretrained": name, "codec": None, "num_tokens": None, "vocab_size": None,
               "checkpoint": str(spec.path), "fitted_on": _fitted_on(Path(spec.path)), "error": None}
        try:
            codec = manager.load_pretrained(name)
            row.update(codec=codec.name, num_tokens=codec.num_tokens, vocab_size=codec.vocab_size)
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
    return rows


def _cmd_plugin_codecs(args: argparse.Namespace) -> int:
    rows = _codec_rows(args.registry)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 1 if any(r["error"] for r in rows) else 0
    if not rows:
        print("no pretrained codecs installed" if args.registry is None else f"{args.registry}: no streams")
    for r in rows:
        vocab = "continuous" if r["vocab_size"] is None and not r["error"] else r["vocab_size"]
        print(f"{r.get('stream') or r.get('pretrained')}  codec {r['codec']}  tokens {r['num_tokens']}  vocab {vocab}")
        print(f"    checkpoint  {r['checkpoint'] or '-'}")
        print(f"    fitted on   {r['fitted_on'] or '(not recorded)'}")
        if r["error"]:
            print(f"    error       {r['error']}")
    return 1 if any(r["error"] for r in rows) else 0


def _registry(args: argparse.Namespace, *, manifest=None, tokens=None, optional: bool = False) -> Path | None:
    """The registry file of a command (`mmtok.registry.find_registry`); one found by the rule (not
    given with --registry) is announced on stderr, with the reason. ``optional``: None when the
    rule finds none (a missing --registry file is still an error)."""
    from mmtok.errors import RegistryError
    from mmtok.registry import find_registry

    try:
        choice = find_registry(args.registry, manifest=manifest, tokens=tokens)
    except RegistryError:
        if optional and args.registry is None:
            return None
        raise
    if args.registry is None and not getattr(args, "quiet", False):
        print(choice, file=sys.stderr)
    return choice.path


def _count(n: int, noun: str) -> str:
    """'1 sample', '3 samples'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cmd_registry_check(args: argparse.Namespace) -> int:
    from mmtok.registry import Registry

    try:
        args.registry = _registry(args)
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
    print(f"{args.registry}: {_count(len(registry.streams), 'stream')}, {_count(len(registry.bundles), 'bundle')}, "
          "all resolved")
    for key, entry in registry.streams.items():
        vocab = entry.vocab_size if entry.vocab_size is not None else "continuous"
        src = f"  checkpoint {entry.checkpoint}" if entry.checkpoint else ""
        print(f"  {key:<22} {entry.modality:<22} {entry.codec:<20} vocab {vocab:<6} "
              f"tokens {entry.num_tokens}{src}")
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from mmtok.scaffold import new_plugin

    root = new_plugin(args.name, args.dir)
    print(f"created {root}\nnext: pip install -e '{root}[dev]' && pytest {root / 'tests'}   # [dev]: pytest")
    return 0


def _not_fitted_yet(registry, entry) -> bool:
    """The stream's checkpoint is a path (not a pretrained name) where nothing exists yet."""
    from mmtok.plugins import get_plugin_manager

    ref = entry.checkpoint
    if ref is None or get_plugin_manager().has_pretrained(ref):
        return False
    return not (Path(ref) if os.path.isabs(ref) else registry.root / ref).exists()


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
            if not _not_fitted_yet(registry, entry):
                problems.append((key, entry.modality, str(err)))
                continue
            # the checkpoint `mmtok fit-codec` will write: check shapes with the unfitted codec
            from mmtok.plugins import get_plugin_manager

            codec = get_plugin_manager().build_codec(entry.codec, entry.config)
            print(f"{registry_path}: stream {key!r}: checkpoint {entry.checkpoint!r} not fitted yet; shapes "
                  "checked with the codec's config", file=sys.stderr)
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
    args.registry = _registry(args, manifest=args.manifest, optional=True)
    if args.registry is None and not args.quiet:
        print(f"registry: none next to {args.manifest} or in the current folder; per-sample shapes are not "
              "checked against codecs", file=sys.stderr)
    stream_problems, check_shape = _shape_checker(args.registry, set(used))
    for key, modality, reason in stream_problems:  # once per stream, before the samples' problems
        print(f"{args.registry}: stream {key!r} ({modality}): {reason}; its shape checks are skipped "
              f"for the {used[modality]} sample(s) with {modality}", file=sys.stderr)
    problems = manifest.validate(check_shape=check_shape, progress=not args.quiet and sys.stderr.isatty())
    for line in summarize(problems):  # a problem many samples share is one line with their count
        print(f"{args.manifest}: {line}", file=sys.stderr)
    n = len(manifest.samples) + len({p.sample for p in manifest.problems})
    if stream_problems or problems:
        registry = f"{len(stream_problems)} problem(s) in {args.registry}, " if stream_problems else ""
        print(f"{registry}{len(problems)} problem(s) in {_count(n, 'sample')}", file=sys.stderr)
        return 1
    kinds = sorted({k for s in manifest.samples for k in s.modalities})
    print(f"{args.manifest}: {_count(n, 'sample')}, {'modality' if len(kinds) == 1 else 'modalities'} "
          f"{', '.join(kinds)}: all valid")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from mmtok.encode import encode_manifest

    # none found: encode_manifest reports a broken manifest first, then the missing registry
    registry = _registry(args, manifest=args.manifest, optional=True)
    summary = encode_manifest(args.manifest, args.out, registry_path=registry,
                              batch_size=args.batch_size, workers=args.workers, on_error=args.on_error,
                              resume=args.resume, overwrite=args.overwrite, shard_size=args.shard_size,
                              streams=args.stream, device=args.device,
                              allow_absolute=args.allow_absolute, progress=not args.quiet)
    if summary is None:  # a non-zero rank under torchrun
        return 0
    print(f"encoded {_count(summary.samples, 'sample')} into {summary.out} in {summary.seconds:.1f} s "
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
    registry = Registry.load(_registry(args, tokens=args.dir))
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

    args.registry = _registry(args, manifest=args.manifest)
    if args.deterministic:  # one thread, deterministic kernels, seeded initialisation: the same weights on every rerun
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(args.seed)  # before the codec is built: its initial weights too
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

    fitted_on = {"data": Path(args.manifest).name, "stream": args.stream, "samples": len(train),
                 "split": f"random, seed {args.seed}, val_fraction {args.val_fraction} ({n_val} held out)"}
    write_json(out / "metrics.json", {"train_samples": len(train), "val_samples": n_val, "fitted_on": fitted_on,
                                      **report.to_dict()})
    print(f"{args.stream}: {report.summary()} ({'held-out' if n_val else 'training'} data, "
          f"{len(train)} train / {n_val} held-out samples)")
    print(f"wrote {out}; point registry.yaml at it:\n  {args.stream}:\n    checkpoint: {json.dumps(str(out))}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mmtok.train import TrainConfig, Trainer

    config = TrainConfig.load(args.config, max_steps=args.max_steps)
    if args.target_stream:
        config = config.with_target_streams(args.target_stream)
    trainer = Trainer(args.tokens, args.out, config, progress=not args.quiet)
    start = trainer.step
    records = trainer.fit()
    if trainer.dist.main:
        evals = [r for r in records if any(k.startswith("val/") for k in r)]
        print(f"trained steps {start}..{trainer.step} -> {args.out} (metrics.jsonl, checkpoints/)")
        if evals:
            last = evals[-1]
            print("| stream | target tokens | held-out loss | accuracy | unigram loss | unigram accuracy |")
            print("|---|---:|---:|---:|---:|---:|")
            fmt = (lambda v: "" if v is None else f"{v:.3f}")
            several = len(trainer.folders) > 1
            for prefix in [f"val/{f.name}/" for f in trainer.folders] if several else ["val/"]:
                for key in trainer.model.layout.keys:
                    if f"{prefix}loss/{key}" not in last:
                        continue
                    tokens = last.get(f"{prefix}tokens/{key}")
                    name = f"{prefix[4:-1]}: {key}" if several else key
                    print(f"| {name} | {'' if tokens is None else int(tokens)} | {last[f'{prefix}loss/{key}']:.3f} | "
                          f"{fmt(last.get(f'{prefix}acc/{key}'))} | {fmt(last.get(f'{prefix}unigram_loss/{key}'))} | "
                          f"{fmt(last.get(f'{prefix}unigram_acc/{key}'))} |")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from mmtok.inference import embed_tokens, save_tensors

    ids, pooled = embed_tokens(args.run, args.tokens, batch_size=args.batch_size, samples=args.sample,
                               exclude=args.exclude_stream, progress=not args.quiet)
    save_tensors(args.out, {"embedding": pooled}, ids)
    print(f"{_count(len(ids), 'sample')} -> {args.out} (embedding {tuple(pooled.shape)})")
    return 0


def cmd_impute(args: argparse.Namespace) -> int:
    from mmtok.inference import impute_tokens, save_tensors
    from mmtok.shards import TokenShards, tensor_names

    ids, pred = impute_tokens(args.run, args.tokens, args.stream, samples=args.sample, steps=args.steps,
                              progress=not args.quiet)
    tensors = {tensor_names(args.stream, not pred.is_floating_point())[0]: pred}
    if args.decode:
        from mmtok.registry import Registry

        shards = TokenShards(args.tokens)
        info = shards.streams[args.stream]
        codec = Registry.load(_registry(args, tokens=args.tokens)).codec(args.stream)
        if codec.fingerprint() != info["fingerprint"]:
            raise MmtokError(f"the registry's codec for {args.stream!r} is not the one that encoded {args.tokens}")
        decoded = codec.decode(shards.make_stream(args.stream, pred))
        tensors[f"{args.stream}/decoded"] = getattr(decoded, codec.field).float()
    save_tensors(args.out, tensors, ids)
    print(f"imputed {args.stream} for {_count(len(ids), 'sample')} -> {args.out} ({', '.join(tensors)})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mmtok.evaluate import evaluate_run
    from mmtok.io import atomic_write, write_json

    report = evaluate_run(args.run, args.tokens, args.stream, registry=_registry(args, tokens=args.tokens,
                                                                                 optional=True),
                          manifest=args.manifest, batch_size=args.batch_size, steps=args.steps,
                          progress=not args.quiet)
    text = report.markdown()
    print(text)
    if args.out is not None:
        write_json(args.out, report.to_dict())
        markdown = args.out.with_suffix(".md")
        atomic_write(markdown, lambda p: p.write_text(text + "\n"))
        print(f"wrote {args.out} and {markdown}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mmtok.evaluate import recorded_manifest
    from mmtok.report import write_report

    from mmtok.shards import TokenShards

    if not args.tokens.is_dir():
        raise MmtokError(f"{args.tokens}: no such token folder (expected the --out folder of `mmtok encode`)")
    TokenShards(args.tokens)  # not a token folder: say so before looking for its registry
    registry = _registry(args, tokens=args.tokens, optional=True)
    manifest = args.manifest if args.manifest is not None else recorded_manifest(args.tokens)
    if args.manifest is None and manifest is not None and not args.quiet:
        print(f"manifest: {manifest} (the one {args.tokens} was encoded from)", file=sys.stderr)
    page = write_report(args.tokens, args.out, manifest=manifest, registry=registry, samples=args.samples)
    print(f"wrote {page}")
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
        p = sub.add_parser(spec.name, help=_plain(spec.help), description=_plain(spec.description or spec.help),
                           formatter_class=_HelpFormatter)
        p.set_defaults(func=_failing(f"plugin {owner!r} set no func for this command"))
        try:
            spec.configure(p)
        except Exception as err:  # noqa: BLE001
            problem = f"command {spec.name!r}: configure(parser) raised {type(err).__name__}: {err}"
            _plugin_problem(manager, owner, problem)
            p.set_defaults(func=_failing(f"plugin {owner!r} is broken: {problem}"))
        _plain_help(p)


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Strip markup from a plugin command's option help, sub-commands included."""
    parser.description = _plain(parser.description)
    for action in parser._actions:
        action.help = _plain(action.help) if isinstance(action.help, str) else action.help
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.formatter_class = _HelpFormatter
                _plain_help(child)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help line (unless it is None / off, or the help already says
    it); descriptions and example epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default is argparse.SUPPRESS
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: {default})"


def _plain(text: str | None) -> str | None:
    """Docstring text for ``--help``: no reStructuredText / Markdown markup (``x``, `x`)."""
    return None if text is None else text.replace("``", "").replace("`", "")


def _command(sub, name: str, help: str, description: str | None = None, examples: str = ""):
    """One subcommand: plain-text help, defaults shown, an example epilog."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()) if examples else None
    return sub.add_parser(name, help=help, description=_plain(description or help), epilog=epilog,
                          formatter_class=_HelpFormatter)


def _registry_option(p, what: str) -> None:
    from mmtok.registry import REGISTRY_RULE

    p.add_argument("--registry", type=Path, default=None, metavar="FILE",
                   help=f"registry.yaml that declares the streams {what} ({REGISTRY_RULE})")


def _quiet_option(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar and no line naming the registry found")


def build_parser(manager=None) -> argparse.ArgumentParser:
    """The ``mmtok`` parser: the built-in commands, then those of ``manager``'s plugins (default:
    the installed ones)."""
    from mmtok import __version__

    parser = argparse.ArgumentParser(
        prog="mmtok", formatter_class=_HelpFormatter,
        description="Turn heterogeneous scientific data into tokens and train one multimodal model on them.",
        epilog="the path from data to a model:\n  mmtok validate manifest.json\n"
               "  mmtok fit-codec manifest.json --stream tok_x --out codecs/tok_x\n"
               "  mmtok encode manifest.json --out tokens\n  mmtok train --tokens tokens --out run\n"
               "  mmtok embed run --tokens tokens --out features.safetensors\n"
               "mmtok COMMAND --help for each command")
    parser.add_argument("--version", action="version", version=f"mmtok {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "plugins", "list plugins, their versions, what they provide, load errors",
                 examples="mmtok plugins\nmmtok plugins --json\nmmtok plugins --codecs\n"
                          "mmtok plugins --codecs --registry examples/clinic/registry.yaml")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--codecs", action="store_true",
                   help="per shipped pretrained codec (or per stream of --registry): codec, tokens, vocabulary, "
                        "checkpoint, and the data it was fitted on (its metrics.json 'fitted_on')")
    p.add_argument("--registry", type=Path, default=None, metavar="FILE",
                   help="with --codecs: list this registry's streams instead of the shipped codecs")
    p.set_defaults(func=cmd_plugins)

    p = _command(sub, "registry", "registry.yaml tools")
    rsub = p.add_subparsers(dest="registry_command", required=True, metavar="SUBCOMMAND")
    c = _command(rsub, "check", "resolve every stream and bundle; non-zero exit on problems",
                 examples="mmtok registry check\nmmtok registry check --registry examples/clinic/registry.yaml")
    c.add_argument("--registry", type=Path, default=None, metavar="FILE",
                   help="registry file to check (default: ./registry.yaml)")
    c.set_defaults(func=cmd_registry_check)

    p = _command(sub, "validate", "check a manifest without running codecs; one line per problem",
                 "Check a manifest: every sample's files, table rows and modality fields, and (with a "
                 "registry) every sample's shape against its stream's codec. Nothing is encoded.",
                 examples="mmtok validate examples/clinic/manifest.json\n"
                          "mmtok validate manifest.json --registry registry.yaml")
    p.add_argument("manifest", type=Path, help="manifest.json (samples, their files and table rows)")
    _registry_option(p, "whose codecs check each sample's shapes; none found: shapes are not checked")
    p.add_argument("--allow-absolute", action="store_true", help="permit absolute paths in the manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown on a terminal) and no registry line")
    p.set_defaults(func=cmd_validate)

    p = _command(sub, "encode", "manifest -> token shards (safetensors) + index",
                 "Encode every sample of a manifest with its streams' codecs into safetensors token "
                 "shards and index.json. Resumable (--resume) and torchrun-parallel.",
                 examples="mmtok encode examples/clinic/manifest.json --out runs/clinic/tokens\n"
                          "torchrun --nproc-per-node 4 -m mmtok encode manifest.json --out tokens --resume")
    p.add_argument("manifest", type=Path, help="manifest.json")
    p.add_argument("--out", type=Path, required=True, help="output token folder")
    _registry_option(p, "and their codec checkpoints")
    p.add_argument("--stream", action="append", metavar="KEY",
                   help="encode only these streams (repeatable; default: every stream of the registry)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per codec call")
    p.add_argument("--shard-size", type=int, default=1024, help="samples per shard")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for reading files")
    p.add_argument("--device", default=None,
                   help="where the codecs run: cpu (default), cuda (under torchrun each rank's own GPU), cuda:1, ...")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="a sample that cannot be read or encoded: stop with its problems, or skip it and list it")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run in --out (finished shards are re-verified, damaged ones redone)")
    p.add_argument("--overwrite", action="store_true", help="replace the encode run already in --out")
    p.add_argument("--allow-absolute", action="store_true", help="permit absolute paths in the manifest")
    _quiet_option(p)
    p.set_defaults(func=cmd_encode)

    p = _command(sub, "decode", "tokens of one sample and stream -> .npy",
                 examples="mmtok decode runs/clinic/tokens --sample p000 --stream tok_labs --out labs.npy "
                          "--manifest examples/clinic/manifest.json")
    p.add_argument("dir", type=Path, help="an mmtok encode output folder")
    p.add_argument("--sample", required=True, help="sample id")
    p.add_argument("--stream", required=True, help="stream key")
    p.add_argument("--out", type=Path, required=True, help=".npy file of the decoded field")
    _registry_option(p, "")
    p.add_argument("--manifest", type=Path, default=None,
                   help="also report the reconstruction error against this manifest's original")
    _quiet_option(p)
    p.set_defaults(func=cmd_decode)

    p = _command(sub, "fit-codec", "train a stream's codec on the manifest's data",
                 "Fit the codec of one stream on the manifest's samples that have its modality (a share "
                 "held out for the reported error) and write a checkpoint folder for registry.yaml.",
                 examples="mmtok fit-codec examples/clinic/manifest.json --stream tok_labs --out codecs/tok_labs\n"
                          "mmtok fit-codec manifest.json --stream tok_beat --out codecs/tok_beat --deterministic")
    p.add_argument("manifest", type=Path, help="manifest.json")
    p.add_argument("--stream", required=True, metavar="KEY", help="the registry stream whose codec is fitted")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder (config.json + model.safetensors)")
    _registry_option(p, "(the stream's codec and config)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (learned codecs)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of samples held out for the error")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of training")
    p.add_argument("--deterministic", action="store_true",
                   help="one CPU thread and deterministic kernels: the same checkpoint on every rerun")
    p.add_argument("--allow-absolute", action="store_true", help="permit absolute paths in the manifest")
    p.add_argument("--force", action="store_true",
                   help="replace the codec already in --out (token folders encoded with it stop decoding)")
    _quiet_option(p)
    p.set_defaults(func=cmd_fit_codec)

    p = _command(sub, "train", "train the shared masked transformer on token shards (torchrun-ready)",
                 "Train the shared multimodal masked transformer (4M-style) on a token folder. A share of "
                 "the samples (val_fraction, by id hash) is held out; the run resumes from its last "
                 "checkpoint. Config: the fields of mmtok.train.TrainConfig (model, masking, optim, ...).",
                 examples="mmtok train --tokens runs/clinic/tokens --out runs/clinic/model --config train.yaml\n"
                          "mmtok train --tokens tokens --out run --target-stream tok_label   # predict tok_label\n"
                          "torchrun --nproc-per-node 8 -m mmtok train --tokens tokens --out run --config train.yaml\n"
                          "mmtok train --tokens runs/clinic/tokens --tokens runs/ecg/tokens --out runs/joint   # one model, two folders")
    p.add_argument("--tokens", type=Path, action="append", default=None,
                   help="an mmtok encode output folder; repeat it to train one model on several (their "
                        "streams' union, sampled as a mixture: tokens / mixture_temperature in the config); "
                        "default: the config's tokens")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumes if it holds a checkpoint)")
    p.add_argument("--config", type=Path, default=None,
                   help="training config YAML (mmtok.train.TrainConfig; default: every setting's default)")
    p.add_argument("--max-steps", type=int, default=None, help="total optimizer steps (overrides the config)")
    p.add_argument("--target-stream", action="append", default=None, metavar="KEY",
                   help="masking preset 'predict KEY from the rest': KEY is never an input and always a "
                        "target (repeatable; adds to the config's masking.target_streams)")
    _quiet_option(p)
    p.set_defaults(func=cmd_train)

    p = _command(sub, "embed", "pooled encoder features of token samples -> safetensors",
                 "Pooled encoder features of every sample (over all its present tokens), for linear probes "
                 "and retrieval. Streams the run was not trained on are ignored.",
                 examples="mmtok embed runs/clinic/model --tokens runs/clinic/tokens --out features.safetensors")
    p.add_argument("run", type=Path, help="an mmtok train run folder")
    p.add_argument("--tokens", type=Path, required=True, help="an mmtok encode output folder")
    p.add_argument("--out", type=Path, required=True, help="safetensors file: 'embedding' (n, d), ids in metadata")
    p.add_argument("--sample", action="append", default=None, help="sample id (repeatable); default all")
    p.add_argument("--exclude-stream", action="append", default=None, metavar="KEY",
                   help="leave this stream out of the inputs (repeatable), e.g. the label a probe predicts")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass")
    _quiet_option(p)
    p.set_defaults(func=cmd_embed)

    p = _command(sub, "impute", "predict a stream from the others (default: where it is missing)",
                 examples="mmtok impute runs/clinic/model --tokens runs/clinic/tokens --stream tok_vitals "
                          "--out vitals.safetensors --decode")
    p.add_argument("run", type=Path, help="an mmtok train run folder")
    p.add_argument("--tokens", type=Path, required=True, help="an mmtok encode output folder")
    p.add_argument("--stream", required=True, metavar="KEY", help="the stream to predict")
    p.add_argument("--out", type=Path, required=True, help="safetensors file of predicted tokens")
    p.add_argument("--sample", action="append", default=None,
                   help="sample id (repeatable); default: every sample without the stream")
    p.add_argument("--steps", type=int, default=8, help="MaskGIT decoding rounds")
    p.add_argument("--decode", action="store_true", help="also decode the tokens with the stream's codec")
    _registry_option(p, "(for --decode)")
    _quiet_option(p)
    p.set_defaults(func=cmd_impute)

    p = _command(sub, "evaluate", "predict streams of held-out samples from their other streams, against baselines",
                 "For every sample the run held out (its val_fraction / val_group) that has the stream and "
                 "another one: predict the stream from the others only. Discrete streams: accuracy, balanced "
                 "accuracy, log loss and per-class recall, against each position's majority token and its "
                 "unigram frequencies. Decodable streams (a codec in the registry and the manifest the token "
                 "folder records): RMSE in data units against the training-set mean. Markdown on stdout, "
                 "JSON with --out.",
                 examples="mmtok evaluate runs/clinic/model --tokens runs/clinic/model_tokens\n"
                          "mmtok evaluate run --tokens tokens --stream tok_label --out report.json")
    p.add_argument("run", type=Path, help="an mmtok train run folder")
    p.add_argument("--tokens", type=Path, required=True, help="the token folder the run was trained on")
    p.add_argument("--stream", action="append", default=None, metavar="KEY",
                   help="stream to evaluate (repeatable; default: every stream of the run)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="manifest of the original values for the RMSE (default: the one the token folder records)")
    _registry_option(p, "and their codecs, for the RMSE in data units")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here (and Markdown next to it)")
    p.add_argument("--steps", type=int, default=8, help="MaskGIT decoding rounds of the decoded prediction")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass")
    _quiet_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = _command(sub, "report", "HTML page of a token folder: per-stream usage, perplexity, decoded samples",
                 "One self-contained HTML page (PNGs beside it) about a token folder: per stream the samples "
                 "that have it, the codebook usage histogram (continuous streams: the token values), "
                 "perplexity and usage; with the registry and manifest it was encoded with, a few decoded "
                 "samples beside their originals. Needs matplotlib.",
                 examples="mmtok report runs/clinic/tokens --out runs/clinic/report\n"
                          "mmtok report tokens --out report --manifest manifest.json --registry registry.yaml")
    p.add_argument("tokens", type=Path, help="an mmtok encode output folder")
    p.add_argument("--out", type=Path, required=True, help="folder of the page (index.html) and its PNGs")
    p.add_argument("--manifest", type=Path, default=None,
                   help="manifest of the originals (default: the one the token folder records)")
    _registry_option(p, "and their codecs, for decoding")
    p.add_argument("--samples", type=int, default=4, help="decoded samples shown per stream")
    _quiet_option(p)
    p.set_defaults(func=cmd_report)

    p = _command(sub, "new-plugin", "scaffold a pip-installable plugin package",
                 examples="mmtok new-plugin seismo --dir .\npip install -e './mmtok-plugin-seismo[dev]'\n"
                          "pytest mmtok-plugin-seismo/tests")
    p.add_argument("name", help="plugin name (lower case, e.g. seismo -> mmtok-plugin-seismo)")
    p.add_argument("--dir", type=Path, default=Path("."), help="folder the package folder is created in")
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

"""The ``mmtok`` command line."""

import argparse
import json
import sys
from pathlib import Path

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
            print(f"    {kind:<11} {', '.join(names)}")
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


def build_parser() -> argparse.ArgumentParser:
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

    p = sub.add_parser("new-plugin", help="scaffold a pip-installable plugin package")
    p.add_argument("name")
    p.add_argument("--dir", type=Path, default=Path("."))
    p.set_defaults(func=cmd_new_plugin)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MmtokError as err:
        print(f"mmtok: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

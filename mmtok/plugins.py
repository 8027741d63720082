"""Plugin discovery: pluggy over the ``mmtok`` entry-point group, one plugin at a time.

pluggy's ``load_setuptools_entrypoints`` stops at the first plugin that fails to import; here
each entry point is loaded and each hook called in isolation. A plugin that fails to import,
raises in a hook, returns something invalid or provides a name that is already taken is
recorded in its `PluginInfo` (``mmtok plugins`` shows it) and everything else keeps working.

Two plugins that provide the same name (a modality, codec, reader, head, bundle, pretrained
codec, sample check or command; or readers claiming the same file suffix) never replace each
other silently: the name is *contested*, reported in both plugins' `PluginInfo`, and every lookup
of it raises a `PluginError` naming both plugins, until all but one are disabled. (The very
same object provided twice, e.g. a plugin re-exporting another's modality, is no conflict.)

Set ``MMTOK_DISABLE_PLUGINS=name1,name2`` to skip plugins by entry-point or distribution name.
"""

import argparse
import dataclasses
import importlib.metadata
import inspect
import os
import threading
from pathlib import Path
from typing import Any

import pluggy

import mmtok.builtin
from mmtok import __version__
from mmtok.codec import Codec, read_codec_config
from mmtok.errors import CodecError, PluginError
from mmtok.hookspecs import (PROJECT, BundleSpec, CodecSpec, CommandSpec, HeadSpec, MmtokSpec, PretrainedSpec,
                             ReaderSpec, SampleCheckSpec)
from mmtok.modality import Modality

__all__ = ["PluginInfo", "PluginManager", "get_plugin_manager", "reset_plugin_manager",
           "DISABLE_ENV"]

DISABLE_ENV = "MMTOK_DISABLE_PLUGINS"
KINDS = ("modalities", "codecs", "readers", "heads", "bundles", "pretrained", "sample_checks", "commands")
_SPEC_TYPE = {"codecs": CodecSpec, "readers": ReaderSpec, "heads": HeadSpec, "bundles": BundleSpec,
              "pretrained": PretrainedSpec, "sample_checks": SampleCheckSpec, "commands": CommandSpec}


@dataclasses.dataclass
class PluginInfo:
    """What ``mmtok plugins`` reports for one plugin."""

    name: str
    package: str | None = None
    version: str | None = None
    provides: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)
    disabled: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


class PluginManager:
    """Holds the loaded plugins and the name -> thing tables built from their hooks."""

    def __init__(self, *, entrypoints: bool = True, builtin: bool = True,
                 disabled: set[str] | None = None):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(MmtokSpec)
        self.info: dict[str, PluginInfo] = {}
        env = os.environ.get(DISABLE_ENV, "")
        self.disabled = set(disabled or ()) | {s.strip() for s in env.split(",") if s.strip()}
        self.tables: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self.owner: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        #: kind -> contested name -> every plugin that provides it (the first one in `owner`)
        self.contested: dict[str, dict[str, list[str]]] = {k: {} for k in KINDS}
        if builtin:
            self.register(mmtok.builtin, "mmtok", package="mmtok", version=_version("mmtok"))
        if entrypoints:
            self.load_entrypoints()

    # ------------------------------------------------------------------ loading
    def load_entrypoints(self) -> None:
        eps = sorted(importlib.metadata.entry_points(group=PROJECT), key=lambda e: e.name)
        for ep in eps:
            package = ep.dist.metadata["Name"] if ep.dist else None
            version = ep.dist.version if ep.dist else None
            if ep.name in self.info:
                continue
            if ep.name in self.disabled or (package and package in self.disabled):
                self.info[ep.name] = PluginInfo(ep.name, package, version, disabled=True)
                continue
            try:
                plugin = ep.load()
            except BaseException as err:  # noqa: BLE001 - a broken plugin must not stop the others
                if isinstance(err, KeyboardInterrupt):
                    raise
                self.info[ep.name] = PluginInfo(
                    ep.name, package, version,
                    errors=[f"import of {ep.value!r} failed: {type(err).__name__}: {err}"])
                continue
            self.register(plugin, ep.name, package=package, version=version)

    def register(self, plugin: Any, name: str, *, package: str | None = None,
                 version: str | None = None) -> PluginInfo:
        """Register a plugin object or module and index what it provides."""
        info = PluginInfo(name, package, version)
        self.info[name] = info
        if name in self.disabled:
            info.disabled = True
            return info
        try:
            self.pm.register(plugin, name=name)
        except Exception as err:  # pluggy validation errors, duplicate registration
            info.errors.append(f"registration failed: {type(err).__name__}: {err}")
            return info
        for kind in KINDS:
            self._index(kind, name, info)
        return info

    def _index(self, kind: str, plugin_name: str, info: PluginInfo) -> None:
        hook = getattr(self.pm.hook, f"mmtok_{kind}")
        for impl in hook.get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            try:
                items = impl.function() or []
            except Exception as err:  # noqa: BLE001
                info.errors.append(f"hook mmtok_{kind} raised {type(err).__name__}: {err}")
                continue
            for item in items:
                problem = _validate(kind, item)
                if problem:
                    info.errors.append(f"mmtok_{kind}: {problem}")
                    continue
                key = item.name
                if key in self.tables[kind]:
                    if item is self.tables[kind][key]:
                        continue  # the very same object again: nothing to choose between
                    first = self.owner[kind][key]
                    self.contested[kind].setdefault(key, [first]).append(plugin_name)
                    if first == plugin_name:  # the plugin itself gives two things one name
                        info.errors.append(f"{_WHAT[kind]} {key!r} is provided twice by this plugin; mmtok "
                                           "uses neither")
                        continue
                    info.provides.setdefault(kind, []).append(key)
                    fix = f"{DISABLE_ENV}={plugin_name}" + ("" if first == "mmtok" else f" or {DISABLE_ENV}={first}")
                    problem = (f"{_WHAT[kind]} {key!r} is also provided by plugin {first!r}; mmtok uses "
                               f"neither until one is disabled ({fix})")
                    info.errors.append(problem)
                    if first in self.info and first != "mmtok":  # mmtok's own pieces are not at fault
                        self.info[first].errors.append(problem.replace(f"plugin {first!r}", f"plugin {plugin_name!r}"))
                    continue
                self.tables[kind][key] = item
                self.owner[kind][key] = plugin_name
                info.provides.setdefault(kind, []).append(key)

    # ------------------------------------------------------------------ lookups
    @property
    def plugins(self) -> list[PluginInfo]:
        return list(self.info.values())

    def _refuse_contested(self, kind: str, name: str) -> None:
        """Raise `PluginError` if several plugins provide ``name``: using either would be a guess."""
        owners = self.contested[kind].get(name)
        if not owners:
            return
        owners = list(dict.fromkeys(owners))
        if len(owners) == 1:
            raise PluginError(f"{_WHAT[kind]} {name!r} is provided twice by plugin {owners[0]!r}, differently; "
                              f"mmtok will not guess which one you mean: fix the plugin or disable it "
                              f"({DISABLE_ENV}={owners[0]})")
        who = ", ".join(f"{o!r} ({self.info[o].package or '?'} {self.info[o].version or '?'})"
                        if o in self.info else repr(o) for o in owners)
        keepable = ["mmtok"] if "mmtok" in owners else owners  # never suggest disabling mmtok's own
        keep = " or ".join(f"{DISABLE_ENV}={','.join(x for x in owners if x != o)} (keeps {o!r})"
                           for o in keepable)
        raise PluginError(f"{_WHAT[kind]} {name!r} is provided by {len(owners)} plugins: {who}; mmtok will "
                          f"not guess which one you mean. Disable all but one: {keep}")

    def _get(self, kind: str, name: str, what: str) -> Any:
        table = self.tables[kind]
        self._refuse_contested(kind, name)
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise PluginError(f"no {what} named {name!r} is installed (known: {known}); "
                              "is its plugin installed? `mmtok plugins` lists what is loaded")
        return table[name]

    def names(self, kind: str) -> list[str]:
        """Sorted names of everything of ``kind`` ("modalities", "codecs", "readers", "heads",
        "bundles", "pretrained", "sample_checks", ...) that the plugins provide."""
        return sorted(self.tables[kind])

    def has_modality(self, name: str) -> bool:
        return name in self.tables["modalities"]

    def has_codec(self, name: str) -> bool:
        return name in self.tables["codecs"]

    def has_pretrained(self, name: str) -> bool:
        return name in self.tables["pretrained"]

    def reader(self, name: str) -> ReaderSpec:
        return self._get("readers", name, "reader")

    def sample_checks(self) -> list[SampleCheckSpec]:
        for name in self.contested["sample_checks"]:
            self._refuse_contested("sample_checks", name)
        return list(self.tables["sample_checks"].values())

    def commands(self) -> list[CommandSpec]:
        """The plugins' ``mmtok`` subcommands, sorted by name. A contested command is one that
        refuses to run, saying which plugins provide it."""
        out = []
        for name in sorted(self.tables["commands"]):
            try:
                self._refuse_contested("commands", name)
                out.append(self.tables["commands"][name])
            except PluginError as err:
                out.append(CommandSpec(name, help=f"unusable: {len(self.contested['commands'][name])} "
                                       "plugins provide it", configure=_refusing(err)))
        return out

    def modality(self, name: str) -> type[Modality]:
        return self._get("modalities", name, "modality")

    def codec_spec(self, name: str) -> CodecSpec:
        return self._get("codecs", name, "codec")

    def codec_class(self, name: str, family: str | None = None) -> type:
        """Class of a registered codec name, falling back to a family name."""
        self._refuse_contested("codecs", name)
        if name in self.tables["codecs"]:
            return self.tables["codecs"][name].codec
        for spec in self.tables["codecs"].values():
            if family and spec.codec.family == family:
                return spec.codec
        raise CodecError(f"codec {name!r} (family {family!r}) is not provided by any installed plugin")

    def build_codec(self, name: str, config: dict | None = None):
        spec = self.codec_spec(name)
        return spec.build(config, modality=self.modality(spec.modality))

    def head(self, name: str) -> HeadSpec:
        return self._get("heads", name, "head")

    def bundle(self, name: str) -> BundleSpec:
        return self._get("bundles", name, "bundle")

    def pretrained(self, name: str) -> PretrainedSpec:
        return self._get("pretrained", name, "pretrained codec")

    def load_codec(self, directory: str | Path, modality: type[Modality] | None = None):
        """Load a codec checkpoint folder (``config.json`` + ``model.safetensors``), finding its
        class and modality among the installed plugins."""
        meta = read_codec_config(Path(directory))
        cls = self.codec_class(meta["codec"], family=meta["family"])
        return cls.from_pretrained(directory, modality=modality or self.modality(meta["modality"]))

    def load_pretrained(self, name: str):
        """Load a codec shipped inside an installed package (offline)."""
        return self.load_codec(self.pretrained(name).path)

    def reader_for(self, path: str | Path) -> ReaderSpec:
        """The reader whose suffix matches the file name (the longest match wins)."""
        name = os.path.basename(path).lower()
        # every suffix starts with "." here, so the match only depends on the name from its first
        # dot on: cache by that ("scan.nii.gz" -> ".nii.gz"), manifests hold many alike files
        tail = name[name.find("."):] if "." in name else ""
        cache = self.__dict__.setdefault("_reader_cache", {})
        if tail in cache:
            return cache[tail]
        best, tied = None, []
        for spec in self.tables["readers"].values():
            for suffix in spec.suffixes:
                if not name.endswith(suffix.lower()):
                    continue
                if best is None or len(suffix) > len(best[0]):
                    best, tied = (suffix, spec), []
                elif len(suffix) == len(best[0]) and spec is not best[1]:
                    tied.append(spec)
        if best is None:
            kinds = sorted({s for r in self.tables["readers"].values() for s in r.suffixes})
            raise PluginError(f"no reader for {os.path.basename(path)!r}; installed readers handle {kinds}")
        self._refuse_contested("readers", best[1].name)
        if tied:  # two readers claim the suffix: which one reads the file would be a guess
            who = ", ".join(f"{r.name!r} (plugin {self.owner['readers'][r.name]!r})" for r in [best[1], *tied])
            raise PluginError(f"files ending in {best[0]!r} are claimed by the readers {who}; mmtok will not "
                              f"guess which one reads {os.path.basename(path)!r}: name one in the manifest "
                              f"(\"reader\": ...) or disable a plugin ({DISABLE_ENV}=...)")
        if all(s.startswith(".") for r in self.tables["readers"].values() for s in r.suffixes):
            cache[tail] = best[1]
        return best[1]


_WHAT = {"modalities": "modality", "codecs": "codec", "readers": "reader", "heads": "head",
         "bundles": "bundle", "pretrained": "pretrained codec", "sample_checks": "sample check",
         "commands": "command"}


def _refusing(err: PluginError):
    """``configure`` of a contested command: whatever the arguments, it fails with ``err``."""
    def configure(parser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="(refused)")
        parser.prefix_chars = ""  # take "--flag" as an argument too: any call ends in `run`

        def run(args) -> int:
            raise err

        parser.set_defaults(func=run)

    return configure


def _validate(kind: str, item: Any) -> str | None:
    if kind == "modalities":
        if not (inspect.isclass(item) and issubclass(item, Modality) and "name" in item.__dict__):
            return f"{item!r} is not a named Modality subclass"
        if not dataclasses.is_dataclass(item):
            return f"{item.__name__} is not a dataclass"
        return None
    if not isinstance(item, _SPEC_TYPE[kind]):
        return f"{item!r} is not a {_SPEC_TYPE[kind].__name__}"
    if kind == "codecs":
        if not (inspect.isclass(item.codec) and issubclass(item.codec, Codec)):
            return f"codec {item.name!r}: {item.codec!r} is not a Codec subclass"
    if kind == "commands" and not (isinstance(item.name, str) and item.name and not item.name.startswith("-")
                                   and not any(c.isspace() for c in item.name) and callable(item.configure)):
        return f"command {item.name!r}: needs a name without spaces and a callable configure(parser)"
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return __version__


_MANAGER: PluginManager | None = None
_LOCK = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _MANAGER
    with _LOCK:
        if _MANAGER is None:
            _MANAGER = PluginManager()
        return _MANAGER


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Drop (or replace) the process-wide manager, e.g. after installing a plugin or in tests."""
    global _MANAGER
    with _LOCK:
        _MANAGER = manager

"""`registry.yaml`: the declared token streams and bundles, resolved against installed plugins.

```yaml
streams:
  tok_labs:                      # token key
    modality: lab_results
    codec: lab-results-fsq       # a CodecSpec name from some plugin
    config: {num_tokens: 3}      # overrides of the codec's default config
    vocab_size: 240              # declared; must match the codec
    num_tokens: 3                # declared; must match the codec
    checkpoint: tabular/diabetes-labs-fsq   # optional: a pretrained name or a path
bundles:
  clinic: {streams: [tok_demographics, tok_labs], heads: []}
```

A ``checkpoint`` is either the name of a pretrained codec shipped inside an installed package
(``mmtok plugins`` lists them) or a directory path, relative to the registry file.

Which registry a command uses (`find_registry`, the same rule for every command): an explicit
``--registry``; else, for a command that reads a token folder, the registry that folder was
encoded with (recorded in its ``index.json`` relative to the folder, so the folder can move
together with it); else ``registry.yaml`` next to the manifest; else ``registry.yaml`` in the
current folder. Commands print which file they used and why.
"""

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from mmtok.config import StrictModel, problems as validation_problems
from mmtok.errors import MmtokError, RegistryError
from mmtok.plugins import PluginManager, get_plugin_manager

__all__ = ["Registry", "RegistryProblem", "StreamEntry", "BundleEntry", "RegistryFile", "RegistryChoice",
           "find_registry", "REGISTRY_RULE"]

KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StreamEntry(StrictModel):
    modality: str
    codec: str
    config: dict[str, Any] = Field(default_factory=dict)
    vocab_size: int | None = Field(description="vocabulary size; null for a continuous stream")
    num_tokens: int = Field(ge=1)
    checkpoint: str | None = None


class BundleEntry(StrictModel):
    streams: list[str] = Field(min_length=1)
    heads: list[str] = Field(default_factory=list)
    description: str = ""


class RegistryFile(StrictModel):
    version: int = 1
    streams: dict[str, StreamEntry]
    bundles: dict[str, BundleEntry] = Field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RegistryProblem:
    where: str  # e.g. "streams.tok_labs.codec"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of silently keeping the last."""

    duplicates: list[str]

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                self.duplicates.append(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                       f"(first at line {seen[key] + 1})")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class Registry:
    """A parsed registry file. ``check()`` resolves every name; ``codec(key)`` builds one."""

    def __init__(self, spec: RegistryFile, path: Path | None = None):
        self.spec = spec
        self.path = path
        self.root = path.parent if path else Path.cwd()
        self._codecs: dict[str, Any] = {}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Registry":
        path = Path(path)
        if not path.is_file():
            raise RegistryError(f"{path}: registry file not found")
        loader = _UniqueKeyLoader(path.read_text())
        loader.duplicates = []
        try:
            data = loader.get_single_data()
        except yaml.YAMLError as err:
            raise RegistryError(f"{path}: invalid YAML: {err}") from None
        finally:
            loader.dispose()
        problems = [f"{path}: {d}" for d in loader.duplicates]
        try:
            spec = RegistryFile.model_validate(data or {})
        except ValidationError as err:
            problems += [f"{path}: {p}" for p in validation_problems(err)]
            spec = None
        if problems:
            raise RegistryError("\n".join(problems))
        return cls(spec, path)

    @property
    def streams(self) -> dict[str, StreamEntry]:
        return self.spec.streams

    @property
    def bundles(self) -> dict[str, BundleEntry]:
        return self.spec.bundles

    # ------------------------------------------------------------------ resolving
    def _checkpoint_dir(self, ref: str, manager) -> Path:
        if manager.has_pretrained(ref):
            return Path(manager.pretrained(ref).path)
        path = Path(ref) if os.path.isabs(ref) else self.root / ref
        if path.is_dir() and not (path / "config.json").is_file():
            raise RegistryError(f"checkpoint {ref!r}: the folder {path} has no config.json, so it is not a codec "
                                "checkpoint (`mmtok fit-codec --out` writes config.json with model.safetensors); "
                                "restore config.json or fit the codec again")
        if not (path / "config.json").is_file():
            known = ", ".join(manager.names("pretrained")) or "none installed"
            raise RegistryError(f"checkpoint {ref!r} is neither an installed pretrained codec "
                                f"({known}) nor a codec directory at {path}")
        return path

    def codec(self, key: str, manager: PluginManager | None = None):
        """Build the codec of stream ``key`` (loading its checkpoint if one is declared) with the
        plugins of ``manager`` (default: the installed ones)."""
        if key in self._codecs:
            return self._codecs[key]
        if key not in self.streams:
            raise RegistryError(f"no stream {key!r} in {self.path}; streams are {sorted(self.streams)}")
        manager = manager or get_plugin_manager()
        entry = self.streams[key]
        modality = manager.modality(entry.modality)
        if entry.checkpoint:
            codec = manager.load_codec(self._checkpoint_dir(entry.checkpoint, manager), modality=modality)
            if codec.name != entry.codec:
                raise RegistryError(f"stream {key!r}: checkpoint {entry.checkpoint!r} holds codec "
                                    f"{codec.name!r}, the stream declares {entry.codec!r}")
            saved = codec.config.model_dump(mode="json")
            want = manager.codec_spec(entry.codec).codec.parse_config(
                {**saved, **entry.config}).model_dump(mode="json")
            diff = sorted(k for k in want if want[k] != saved.get(k))
            if diff:
                raise RegistryError(f"stream {key!r}: config differs from checkpoint "
                                    f"{entry.checkpoint!r} in {diff}")
        else:
            spec = manager.codec_spec(entry.codec)
            codec = spec.build(entry.config, modality=modality)
            codec.eval()
        self._codecs[key] = codec
        return codec

    def check(self, manager: PluginManager | None = None) -> list[RegistryProblem]:
        """Every unresolved name, mismatch or broken reference, each as one problem."""
        manager = manager or get_plugin_manager()
        problems: list[RegistryProblem] = []

        def add(where: str, message: str) -> None:
            problems.append(RegistryProblem(where, message))

        for key, entry in self.streams.items():
            where = f"streams.{key}"
            if not re.match(KEY_PATTERN, key):
                add(where, f"token key must match {KEY_PATTERN}")
            ok = True
            if not manager.has_modality(entry.modality):
                add(f"{where}.modality", f"unknown modality {entry.modality!r} (installed: "
                    f"{', '.join(manager.names('modalities')) or 'none'})")
                ok = False
            if not manager.has_codec(entry.codec):
                add(f"{where}.codec", f"unknown codec {entry.codec!r} (installed: "
                    f"{', '.join(manager.names('codecs')) or 'none'})")
                ok = False
            elif manager.codec_spec(entry.codec).modality != entry.modality:
                add(f"{where}.codec", f"codec {entry.codec!r} tokenizes modality "
                    f"{manager.codec_spec(entry.codec).modality!r}, not {entry.modality!r}")
                ok = False
            if not ok:
                continue
            try:
                codec = self.codec(key, manager)
            except MmtokError as err:
                add(f"{where}.checkpoint" if entry.checkpoint else f"{where}.config", str(err))
                continue
            if entry.vocab_size != codec.vocab_size:
                add(f"{where}.vocab_size", f"declared {entry.vocab_size}, codec {entry.codec!r} "
                    f"has {codec.vocab_size}")
            if entry.num_tokens != codec.num_tokens:
                add(f"{where}.num_tokens", f"declared {entry.num_tokens}, codec {entry.codec!r} "
                    f"emits {codec.num_tokens} (grid {codec.grid})")
        for name, bundle in self.bundles.items():
            for key in bundle.streams:
                if key not in self.streams:
                    add(f"bundles.{name}.streams", f"unknown stream {key!r}")
            if len(set(bundle.streams)) != len(bundle.streams):
                add(f"bundles.{name}.streams", "lists a stream twice")
            for head in bundle.heads:
                if head not in manager.names("heads"):
                    add(f"bundles.{name}.heads", f"unknown head {head!r} (installed: "
                        f"{', '.join(manager.names('heads')) or 'none'})")
        return problems



#: the rule of `find_registry`, worded for every command's ``--help``
REGISTRY_RULE = ("default: the registry the token folder was encoded with, else registry.yaml next to the "
                 "manifest, else ./registry.yaml; the file used is printed")


@dataclasses.dataclass(frozen=True)
class RegistryChoice:
    """The registry file a command uses and why (``reason`` is printed with it)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"registry: {self.path} ({self.reason})"


def find_registry(explicit: str | os.PathLike | None = None, *, manifest: str | os.PathLike | None = None,
                  tokens: str | os.PathLike | None = None) -> RegistryChoice:
    """The registry a command uses: ``explicit`` (``--registry``), else the one the token folder
    ``tokens`` was encoded with, else ``registry.yaml`` next to ``manifest``, else ``./registry.yaml``.
    Raises a `RegistryError` listing every place looked at when none exists."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise RegistryError(f"{path}: registry file not found (given by --registry)")
        return RegistryChoice(path, "--registry")
    looked = []
    if tokens is not None:
        recorded = recorded_registry(tokens)
        if recorded is not None:
            if recorded.is_file():
                return RegistryChoice(recorded, f"the one {tokens} was encoded with")
            looked.append(f"{recorded} (recorded by {tokens}, now missing)")
    if manifest is not None:
        path = Path(manifest).parent / "registry.yaml"
        if path.is_file():
            return RegistryChoice(path, "next to the manifest")
        looked.append(str(path))
    path = Path("registry.yaml")
    if path.is_file():
        return RegistryChoice(path, "current folder")
    looked.append(str(Path.cwd() / "registry.yaml"))
    raise RegistryError(f"no registry found (looked for {', '.join(looked)}); pass --registry FILE")


def recorded_registry(tokens: str | os.PathLike) -> Path | None:
    """The registry a token folder's ``index.json`` records (stored relative to the folder; an
    absolute path, as older folders have, is used as it is), or None."""
    return recorded_path(tokens, "registry")


def recorded_path(tokens: str | os.PathLike, key: str) -> Path | None:
    """The file a token folder's ``index.json`` records under ``key`` ("registry",
    "manifest_path"), resolved against the folder; None when it records none."""
    import json

    index = Path(tokens) / "index.json"
    if not index.is_file():
        return None
    try:
        ref = json.loads(index.read_text()).get(key)
    except (OSError, json.JSONDecodeError):
        return None
    if not ref:
        return None
    return Path(ref) if os.path.isabs(ref) else Path(tokens) / ref

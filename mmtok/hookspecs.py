"""The plugin contract. A plugin is a module (or object) with ``@hookimpl`` functions,
exposed through the ``mmtok`` entry-point group::

    # pyproject.toml of mmtok-plugin-ct
    [project.entry-points.mmtok]
    ct = "mmtok_plugin_ct.plugin"

    # mmtok_plugin_ct/plugin.py
    from mmtok import hookimpl, CodecSpec
    @hookimpl
    def mmtok_modalities():
        return [CTVolume]
    @hookimpl
    def mmtok_codecs():
        return [CodecSpec("ct-volume-fsq", modality="ct_volume", codec=VolumeCodec,
                          defaults={"channels": 1, "size": [64, 128, 128], "patch": [4, 16, 16]})]

Every hook is optional and returns a list. Names are global: a name that an earlier plugin
already provides (mmtok's own generic pieces come first) is rejected and reported for the later
plugin by ``mmtok plugins``. mmtok registers its own generic pieces through these same hooks
(`mmtok.builtin`).
"""

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pluggy

__all__ = ["hookspec", "hookimpl", "CodecSpec", "ReaderSpec", "HeadSpec", "BundleSpec",
           "PretrainedSpec", "SampleCheckSpec", "CommandSpec", "MmtokSpec", "PROJECT"]

PROJECT = "mmtok"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclasses.dataclass(frozen=True)
class CodecSpec:
    """A named, configured codec: ``codec`` is a `Codec` family class, ``defaults`` its default
    config (``modality`` is filled in). ``build(config)`` merges a user config over the defaults."""

    name: str
    modality: str
    codec: type  # a subclass of mmtok.Codec
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""

    def config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {**self.defaults, **(overrides or {}), "modality": self.modality}

    def build(self, overrides: Mapping[str, Any] | None = None, modality: type | None = None):
        return self.codec(self.config(overrides), modality=modality, name=self.name)


@dataclasses.dataclass(frozen=True)
class ReaderSpec:
    """Reads one file kind. ``read(path, **options) -> {field: array}`` (numpy arrays or lists);
    ``options`` come from the manifest entry's ``options`` (a frame, a slice, a region) and a
    reader declares the ones it takes as keyword parameters.

    A manifest entry picks its reader by suffix, or by name (``{"path": ..., "reader": "dicom"}``).
    ``directory`` readers take a folder (a DICOM series); they must not follow links out of it.
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], dict[str, np.ndarray]]
    description: str = ""
    directory: bool = False


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """A model head: ``factory(d_model=, streams=, **config) -> nn.Module`` with
    ``loss(features, batch) -> scalar`` (the masked pass's encoder `Features` and the
    `TokenBatch`). Optional: ``metrics() -> {name: float}`` of its last ``loss`` call, which the
    trainer logs as ``head/<name>/<metric>``. A head with ``uses_model = True`` is called
    ``loss(features, batch, model=transformer)`` and may run its own encoder passes
    (``model.encode_present(batch.without(keys))``), as contrastive heads do."""

    name: str
    factory: Callable[..., Any]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class BundleSpec:
    """A named set of token streams plus the heads trained on them."""

    name: str
    streams: tuple[str, ...]
    heads: tuple[str, ...] = ()
    description: str = ""


@dataclasses.dataclass(frozen=True)
class PretrainedSpec:
    """A pretrained codec shipped inside a package: ``path`` is a directory holding
    ``config.json`` + ``model.safetensors``. Named ``"<plugin>/<name>"``, e.g.
    ``"tabular/diabetes-labs-fsq"``; registry.yaml refers to it as ``checkpoint:``."""

    name: str
    path: Path
    description: str = ""


@dataclasses.dataclass(frozen=True)
class SampleCheckSpec:
    """An invariant across the modalities of one sample (a mask on its volume's grid).

    ``check(modalities)`` gets ``{modality name: Modality}`` of one sample whenever it holds all
    of ``modalities``, and raises an `MmtokError` naming the field and what it expected; the
    problem is reported against the last of ``modalities``.
    """

    name: str
    modalities: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], None]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """A ``mmtok NAME`` subcommand (as llm's ``register_commands``). ``configure(parser)`` gets the
    command's own `argparse.ArgumentParser`: it adds the arguments (or sub-subparsers) and sets
    ``parser.set_defaults(func=run)``, where ``run(args) -> int`` is the exit status. A name that
    a built-in command or an earlier plugin already has is reported and ignored."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    description: str = ""


class MmtokSpec:
    """Hook specifications. Each returns a list of what the plugin provides."""

    @hookspec
    def mmtok_modalities(self) -> list[type]:
        """Modality classes (subclasses of `mmtok.Modality`)."""

    @hookspec
    def mmtok_codecs(self) -> list[CodecSpec]:
        """Named codecs."""

    @hookspec
    def mmtok_readers(self) -> list[ReaderSpec]:
        """File readers: file kinds -> modality fields."""

    @hookspec
    def mmtok_heads(self) -> list[HeadSpec]:
        """Model heads (bundle objectives)."""

    @hookspec
    def mmtok_bundles(self) -> list[BundleSpec]:
        """Bundles of streams and heads."""

    @hookspec
    def mmtok_pretrained(self) -> list[PretrainedSpec]:
        """Pretrained codecs shipped as package data."""

    @hookspec
    def mmtok_sample_checks(self) -> list[SampleCheckSpec]:
        """Checks across the modalities of one sample (run by ``mmtok encode`` / ``validate``)."""

    @hookspec
    def mmtok_commands(self) -> list[CommandSpec]:
        """Subcommands of the ``mmtok`` command line."""

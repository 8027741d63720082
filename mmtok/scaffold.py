"""`mmtok new-plugin NAME --dir DIR`: scaffold a pip-installable plugin that passes the kit."""

import re
from pathlib import Path

from mmtok.errors import MmtokError

__all__ = ["new_plugin"]

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "mmtok-plugin-{name}"
version = "0.1.0"
description = "mmtok plugin: {name}"
requires-python = ">=3.10"
dependencies = ["mmtok>=0.1"]

[project.optional-dependencies]
dev = ["pytest>=7"]

[project.entry-points.mmtok]
{name} = "{package}.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
# mmtok.testing's fixture for every test: plugins freshly loaded, torch seeded
addopts = "-p mmtok.testing"
usefixtures = ["fresh_plugins"]
"""

README = """\
# mmtok-plugin-{name}

An mmtok plugin providing the `{modality}` modality and the `{codec}` codec.

```bash
pip install -e ".[dev]"     # mmtok discovers it through the `mmtok` entry point; [dev] adds pytest
mmtok plugins               # lists mmtok-plugin-{name}
pytest tests                # runs mmtok's conformance kit on it
```

Edit `src/{package}/modalities.py` (the data: a frozen dataclass with jaxtyping shapes) and
`src/{package}/plugin.py` (what the plugin registers), then rerun the tests. As it grows, keep the
layout of the plugins shipped with mmtok: `codecs.py`, `readers.py`, `preprocessing.py`,
`datasets.py`, `model/` (networks, losses), `data/` (shipped data, pretrained codecs), `cli.py`
(its `mmtok` subcommands, registered by the `mmtok_commands` hook).
"""

MODALITY = '''\
"""The {modality} modality. Do not add `from __future__ import annotations` here:
it would turn the shape annotations into strings and disable the checks."""

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from mmtok import Modality


@dataclass(frozen=True, eq=False)
class {cls}(Modality):
    """A batch of 1D signals. values: (b, c, length); every tensor field is batched on axis 0."""

    name: ClassVar[str] = "{modality}"
    values: Float[Tensor, "b c length"]

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "{cls}":
        """A small valid batch that fits the default codec config (1 channel, 64 samples)."""
        return cls(values=torch.randn(batch_size, 1, 64, generator=generator))
'''

PLUGIN = '''\
"""What mmtok-plugin-{name} registers. Every hook is optional and returns a list."""

from mmtok import CodecSpec, SpectrumCodec, hookimpl

from {package}.modalities import {cls}


@hookimpl
def mmtok_modalities():
    return [{cls}]


@hookimpl
def mmtok_codecs():
    return [
        CodecSpec(
            "{codec}", modality="{modality}", codec=SpectrumCodec,
            defaults={{"channels": 1, "size": [64], "patch": [8],
                      "quantizer": {{"kind": "fsq", "levels": [8, 5, 5, 5]}}}},
            description="one FSQ token per 8 samples",
        )
    ]
'''

TEST = '''\
import mmtok
from mmtok.testing import check_plugin

from {package} import plugin


def test_conformance():
    checked = check_plugin(plugin)
    assert "modality:{modality}" in checked and "codec:{codec}" in checked


def test_discovered_through_entry_point():
    manager = mmtok.get_plugin_manager()
    info = {{p.name: p for p in manager.plugins}}["{name}"]
    assert info.ok, info.errors
    assert "{modality}" in info.provides["modalities"]
'''


def new_plugin(name: str, directory: str | Path) -> Path:
    """Write ``DIR/mmtok-plugin-NAME`` and return its path."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise MmtokError(f"plugin name must be lowercase letters, digits and '_', found {name!r}")
    root = Path(directory) / f"mmtok-plugin-{name}"
    if root.exists() and any(root.iterdir()):
        raise MmtokError(f"{root} already exists and is not empty")
    package = f"mmtok_plugin_{name}"
    words = {
        "name": name, "package": package, "modality": f"{name}_signal",
        "codec": f"{name.replace('_', '-')}-fsq",
        "cls": "".join(w.capitalize() for w in name.split("_")) + "Signal",
    }
    files = {
        "pyproject.toml": PYPROJECT, "README.md": README,
        f"src/{package}/__init__.py": '"""mmtok plugin {name}."""\n',
        f"src/{package}/modalities.py": MODALITY, f"src/{package}/plugin.py": PLUGIN,
        "tests/test_conformance.py": TEST,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**words))
    return root

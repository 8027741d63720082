"""Plugin discovery through entry points, with failures isolated and reported."""

import json
import os
import subprocess
import sys

import pytest

import mmtok
from mmtok.errors import PluginError
from mmtok.plugins import DISABLE_ENV, PluginManager

from helpers import fake_dist


GOOD = """
    from dataclasses import dataclass
    from typing import ClassVar
    import torch
    from jaxtyping import Float
    from torch import Tensor
    from mmtok import Modality, CodecSpec, hookimpl
    from mmtok.codecs import TableCodec

    @dataclass(frozen=True, eq=False)
    class Pressure(Modality):
        name: ClassVar[str] = "pressure"
        values: Float[Tensor, "b 2"]
        @classmethod
        def example(cls, batch_size=2, generator=None):
            return cls(values=torch.randn(batch_size, 2, generator=generator))

    @hookimpl
    def mmtok_modalities():
        return [Pressure]

    @hookimpl
    def mmtok_codecs():
        return [CodecSpec("pressure-fsq", "pressure", TableCodec, {"columns": 2})]
"""
BROKEN = "raise ImportError('this plugin needs libfoo, which is not installed')\n"
CLASH = """
    from mmtok import hookimpl, CodecSpec
    from mmtok.modalities import Image
    from mmtok.codecs import ImageCodec

    @hookimpl
    def mmtok_modalities():
        return [Image]          # 'image' is already provided by mmtok itself

    @hookimpl
    def mmtok_codecs():
        return [CodecSpec("image-patch-alt", "image", ImageCodec,
                          {"channels": 3, "size": [32, 32], "patch": [8, 8]})]
"""
HOOK_RAISES = """
    from mmtok import hookimpl
    @hookimpl
    def mmtok_codecs():
        raise RuntimeError("bad config table")
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    fake_dist(tmp_path, "mmtok-plugin-good", "goodplug", GOOD)
    fake_dist(tmp_path, "mmtok-plugin-broken", "brokenplug", BROKEN)
    fake_dist(tmp_path, "mmtok-plugin-clash", "clashplug", CLASH)
    fake_dist(tmp_path, "mmtok-plugin-hookraises", "hookplug", HOOK_RAISES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_failures_are_isolated_and_reported(site):
    manager = PluginManager()
    info = {p.name: p for p in manager.plugins}
    assert info["mmtok"].ok
    assert info["goodplug"].ok and info["goodplug"].version == "0.3.0"
    assert info["goodplug"].package == "mmtok-plugin-good"
    assert "libfoo" in info["brokenplug"].errors[0] and "ImportError" in info["brokenplug"].errors[0]
    clash = info["clashplug"]
    assert any("'image' is already provided by plugin 'mmtok'" in e for e in clash.errors)
    assert clash.provides["codecs"] == ["image-patch-alt"]  # the rest of it still works
    assert "bad config table" in info["hookplug"].errors[0]
    # everything that loaded works
    codec = manager.build_codec("pressure-fsq")
    assert codec.modality.name == "pressure"
    assert manager.modality("image") is mmtok.modalities.Image


def test_disable_by_environment(site, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "goodplug, mmtok-plugin-broken")
    info = {p.name: p for p in PluginManager().plugins}
    assert info["goodplug"].disabled and not info["goodplug"].provides
    assert info["brokenplug"].disabled and info["brokenplug"].ok
    with pytest.raises(PluginError, match="pressure"):
        PluginManager().modality("pressure")


def test_cli_lists_broken_plugin_and_exits_zero(site):
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    run = subprocess.run([sys.executable, "-m", "mmtok.cli", "plugins", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    assert "libfoo" in rows["brokenplug"]["errors"][0]
    assert rows["goodplug"]["provides"]["modalities"] == ["pressure"]
    text = subprocess.run([sys.executable, "-m", "mmtok.cli", "plugins"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "[ERROR]" in text.stdout and "goodplug" in text.stdout


def test_unknown_names_explain_themselves():
    manager = PluginManager(entrypoints=False)
    with pytest.raises(PluginError, match=r"no modality named 'ct_volume'.*known: image"):
        manager.modality("ct_volume")
    with pytest.raises(PluginError, match=r"no reader for 'scan.nii.gz'"):
        manager.reader_for("scan.nii.gz")
    assert manager.reader_for("x/cube.NPZ").name == "npz"


def test_invalid_provided_items_are_reported():
    class Plugin:
        @mmtok.hookimpl
        def mmtok_modalities(self):
            return [int]

    manager = PluginManager(entrypoints=False)
    info = manager.register(Plugin(), "weird")
    assert "not a named Modality subclass" in info.errors[0]


class CommandPlugin:
    """A plugin adding `mmtok greet NAME [--shout]` and, wrongly, a second `encode`."""

    @mmtok.hookimpl
    def mmtok_commands(self):
        def configure(parser):
            parser.add_argument("who")
            parser.add_argument("--shout", action="store_true")
            parser.set_defaults(func=lambda args: print(f"hello {args.who}{'!' if args.shout else ''}") or 3)

        return [mmtok.CommandSpec("greet", help="say hello from a plugin", configure=configure),
                mmtok.CommandSpec("encode", help="clashes with the built-in", configure=configure)]


def test_plugin_commands_join_the_cli_and_clashes_are_reported(capsys):
    from mmtok.cli import build_parser, main

    manager = PluginManager(entrypoints=False)
    info = manager.register(CommandPlugin(), "greeter")
    assert info.ok and info.provides["commands"] == ["greet", "encode"]
    assert [c.name for c in manager.commands()] == ["encode", "greet"]
    with pytest.raises(SystemExit) as exit_:
        build_parser(manager).parse_args(["--help"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert "greet" in out and "say hello from a plugin" in out and "clashes with the built-in" not in out
    assert "plugin 'greeter': command 'encode' clashes with a built-in mmtok command" in err
    assert any("'encode' clashes with a built-in" in e for e in manager.info["greeter"].errors)
    assert main(["greet", "Ada", "--shout"], manager=manager) == 3
    assert "hello Ada!" in capsys.readouterr().out
    # the built-in `encode` is still mmtok's own
    with pytest.raises(SystemExit):
        build_parser(manager).parse_args(["encode", "--help"])
    out = capsys.readouterr().out
    assert "--on-error" in out and "--shout" not in out


def test_a_broken_command_plugin_does_not_stop_help_or_version(capsys):
    from mmtok.cli import main

    class Broken:
        @mmtok.hookimpl
        def mmtok_commands(self):
            def configure(parser):
                raise RuntimeError("needs libbar")
            return [mmtok.CommandSpec("bar", help="broken", configure=configure), "not a spec"]

    manager = PluginManager(entrypoints=False)
    info = manager.register(Broken(), "broken")
    assert "not a CommandSpec" in info.errors[0]
    for argv in (["--help"], ["--version"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv, manager=manager)
        assert exit_.value.code == 0
    assert "needs libbar" in capsys.readouterr().err
    assert main(["bar"], manager=manager) == 2
    assert "mmtok bar: error: plugin 'broken' is broken" in capsys.readouterr().err

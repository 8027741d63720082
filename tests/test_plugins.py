"""Plugin discovery through entry points, with failures isolated and reported."""

import json
import os
import subprocess
import sys

import numpy as np
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
    from dataclasses import dataclass
    from typing import ClassVar
    from mmtok import hookimpl, CodecSpec
    from mmtok.modalities import Image as _Image
    from mmtok.codecs import ImageCodec

    @dataclass(frozen=True, eq=False)
    class Image(_Image):
        name: ClassVar[str] = "image"   # 'image' is already provided by mmtok itself

    @hookimpl
    def mmtok_modalities():
        return [Image, _Image]  # its own 'image' clashes; mmtok's own class again is no clash

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
    assert [e for e in clash.errors if "'image'" in e] == [
        f"modality 'image' is also provided by plugin 'mmtok'; mmtok uses neither until one is disabled "
        f"({DISABLE_ENV}=clashplug)"]
    assert clash.provides["codecs"] == ["image-patch-alt"]  # the rest of it still works
    assert "bad config table" in info["hookplug"].errors[0]
    # everything that loaded works; the contested name is refused, naming both plugins
    codec = manager.build_codec("pressure-fsq")
    assert codec.modality.name == "pressure"
    with pytest.raises(PluginError, match=rf"modality 'image' is provided by 2 plugins: 'mmtok' .*'clashplug' "
                                          rf"\(mmtok-plugin-clash 0.3.0\).*{DISABLE_ENV}=clashplug \(keeps 'mmtok'\)"):
        manager.modality("image")


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


def _provider(tag: str):
    """A plugin object providing one thing of every kind, all under the same names."""
    from dataclasses import dataclass
    from typing import ClassVar

    from mmtok.codecs import TableCodec
    from mmtok.modalities import Columns

    @dataclass(frozen=True, eq=False)
    class Reading(Columns):
        name: ClassVar[str] = "reading"

    def read(path):
        return {"values": tag}

    class Plugin:
        @mmtok.hookimpl
        def mmtok_modalities(self):
            return [Reading]

        @mmtok.hookimpl
        def mmtok_codecs(self):
            return [mmtok.CodecSpec("reading-fsq", "reading", TableCodec, {"columns": 2})]

        @mmtok.hookimpl
        def mmtok_readers(self):
            return [mmtok.ReaderSpec(f"reader-{tag}", (".rdg",), read), mmtok.ReaderSpec("rdg", (".rd2",), read)]

        @mmtok.hookimpl
        def mmtok_heads(self):
            return [mmtok.HeadSpec("reading-head", lambda **kw: None)]

        @mmtok.hookimpl
        def mmtok_bundles(self):
            return [mmtok.BundleSpec("reading-bundle", ("tok_reading",))]

        @mmtok.hookimpl
        def mmtok_sample_checks(self):
            return [mmtok.SampleCheckSpec("reading-check", ("reading",), lambda m: None)]

        @mmtok.hookimpl
        def mmtok_commands(self):
            return [mmtok.CommandSpec("reading", help=tag, configure=lambda p: p.set_defaults(func=lambda a: 0))]

    return Plugin()


@pytest.mark.parametrize("order", [("alpha", "beta"), ("beta", "alpha")])
def test_a_name_two_plugins_provide_is_refused_everywhere_naming_both(order, capsys):
    """Two plugins providing the same modality / codec / reader / head / bundle / sample check /
    command name, or two readers the same suffix: whichever registers first, every lookup of the
    name refuses, naming both plugins and the variable that disables one; both list the conflict."""
    from mmtok.cli import main

    manager = PluginManager(entrypoints=False)
    for tag in order:
        manager.register(_provider(tag), tag)
    both = r"provided by 2 plugins: '(alpha|beta)' .*'(alpha|beta)' .*MMTOK_DISABLE_PLUGINS=(alpha|beta) \(keeps"
    for lookup in (lambda: manager.modality("reading"), lambda: manager.codec_spec("reading-fsq"),
                   lambda: manager.build_codec("reading-fsq"), lambda: manager.codec_class("reading-fsq"),
                   lambda: manager.reader("rdg"), lambda: manager.reader_for("x.rd2"),
                   lambda: manager.head("reading-head"), lambda: manager.bundle("reading-bundle"),
                   manager.sample_checks):
        with pytest.raises(PluginError, match=both):
            lookup()
    with pytest.raises(PluginError, match=r"'\.rdg' are claimed by the readers 'reader-(alpha|beta)' \(plugin "):
        manager.reader_for("data/x.rdg")
    assert main(["reading", "--shout", "x"], manager=manager) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmtok: command 'reading' is provided by 2 plugins")
    for tag in order:
        errors = manager.info[tag].errors
        assert len(errors) == 7 and all("MMTOK_DISABLE_PLUGINS=" in e for e in errors), errors
    # the same object from two plugins is no conflict; disabling one plugin resolves every name
    manager = PluginManager(entrypoints=False, disabled={order[1]})
    for tag in order:
        manager.register(_provider(tag), tag)
    manager.register(type("Again", (), {"mmtok_modalities": mmtok.hookimpl(
        lambda self: [manager.modality("reading")])})(), "again")
    assert manager.modality("reading").name == "reading" and manager.info["again"].ok
    assert manager.reader_for("x.rdg").name == f"reader-{order[0]}" and len(manager.sample_checks()) == 1


REPLACER = """
    from dataclasses import dataclass
    from typing import ClassVar
    from mmtok import Columns, hookimpl

    @dataclass(frozen=True, eq=False)
    class OtherVitals(Columns):
        name: ClassVar[str] = "vital_signs"     # mmtok-plugin-tabular's name
        columns: ClassVar[tuple[str, ...]] = ("bp",)

    @hookimpl
    def mmtok_modalities():
        return [OtherVitals]
"""


def test_a_plugin_cannot_take_over_another_plugins_modality_on_the_clinic_example(tmp_path, monkeypatch, capsys):
    """A plugin whose entry point sorts before ``tabular`` provides ``vital_signs`` too: encode and
    validate of the real clinic example refuse with one line naming both plugins (not a run with
    other tokens, not one line per sample); disabling the newcomer restores the run."""
    from pathlib import Path

    from mmtok.cli import main

    clinic = Path(__file__).resolve().parents[1] / "examples" / "clinic"
    fake_dist(tmp_path, "mmtok-plugin-vitals", "avitals", REPLACER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(mmtok.plugins, "_MANAGER", None)
    args = [str(clinic / "manifest.json"), "--registry", str(clinic / "registry.yaml")]
    assert main(["encode", *args, "--out", str(tmp_path / "tokens"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "modality 'vital_signs' is provided by 2 plugins: 'avitals' " in err
    assert "'tabular' (mmtok-plugin-tabular " in err and "MMTOK_DISABLE_PLUGINS=avitals (keeps 'tabular')" in err
    assert not (tmp_path / "tokens" / "index.json").exists()
    assert main(["validate", *args]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert sum("provided by 2 plugins" in line for line in lines) == 2, lines  # the stream, then the samples
    assert lines[1].startswith(f"{clinic / 'manifest.json'}: 294 samples ('p001', 'p002', 'p004' and 291 more), "
                               "vital_signs: modality 'vital_signs' is provided by 2 plugins"), lines
    monkeypatch.setenv(DISABLE_ENV, "avitals")
    monkeypatch.setattr(mmtok.plugins, "_MANAGER", None)
    assert main(["validate", *args]) == 0


def test_a_codec_folder_without_config_json_says_exactly_that(tmp_path):
    """The shipped vitals codec with its config.json lost: loading it, or a registry pointing at
    it, says the folder has no config.json (not 'neither a pretrained codec nor a directory')."""
    import shutil

    manager = PluginManager()
    folder = tmp_path / "codecs" / "vitals"
    shutil.copytree(manager.pretrained("tabular/diabetes-vitals-quantile").path, folder)
    (folder / "config.json").unlink()
    with pytest.raises(mmtok.CodecError, match=r"codecs/vitals: not a codec checkpoint \(no config.json\)"):
        manager.load_codec(folder)
    (tmp_path / "registry.yaml").write_text(
        "streams:\n  tok_vitals: {modality: vital_signs, codec: vitals-quantile, vocab_size: 64, num_tokens: 1, "
        "checkpoint: codecs/vitals}\n")
    registry = mmtok.Registry.load(tmp_path / "registry.yaml")
    with pytest.raises(mmtok.RegistryError, match=r"checkpoint 'codecs/vitals': the folder .*codecs/vitals has no "
                                                   r"config.json, so it is not a codec checkpoint"):
        registry.codec("tok_vitals", manager)
    problems = [str(p) for p in registry.check(manager)]
    assert len(problems) == 1 and "has no config.json" in problems[0], problems


def test_manifest_options_reach_the_reader_and_unknown_options_are_refused(tmp_path):
    """A path entry's ``options`` are the reader's keyword arguments (a frame of a stack); an
    option the reader does not declare is one line naming the reader and the options it takes;
    options on a table entry are refused when the manifest is checked."""
    from mmtok.manifest import Manifest, SampleError

    def read(path, frame: int = 0):
        return {"values": np.load(path)[frame]}

    class Plugin:
        @mmtok.hookimpl
        def mmtok_readers(self):
            return [mmtok.ReaderSpec("stack", (".stk",), read)]

    manager = PluginManager(entrypoints=False)
    manager.register(Plugin(), "stacks")
    with open(tmp_path / "a.stk", "wb") as fh:
        np.save(fh, np.arange(6.0).reshape(3, 2))
    entries = [{"path": "a.stk", "options": {"frame": 2}}, {"path": "a.stk", "options": {"slice": 1}}, "a.stk"]
    (tmp_path / "m.json").write_text(json.dumps({"samples": [
        {"id": f"s{i}", "modalities": {"x": e}} for i, e in enumerate(entries)]}))
    man = Manifest.load(tmp_path / "m.json")
    assert man.record(man.samples[0], "x", manager)["values"].tolist() == [4.0, 5.0]
    assert man.record(man.samples[2], "x", manager)["values"].tolist() == [0.0, 1.0]
    with pytest.raises(SampleError, match=r"sample 's1', x: the 'stack' reader takes no option\(s\) \['slice'\]; "
                                          r"its options are \['frame'\]"):
        man.record(man.samples[1], "x", manager)
    (tmp_path / "t.json").write_text(json.dumps({"tables": {"t": {"path": "t.csv"}}, "samples": [
        {"id": "a", "modalities": {"x": {"table": "t", "row": 0, "options": {"frame": 1}}}}]}))
    assert any("'options' only applies to path entries" in p.reason for p in Manifest.load(tmp_path / "t.json").problems)

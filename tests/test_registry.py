"""registry.yaml: schema, resolution against plugins, checkpoints, `mmtok registry check`."""

import subprocess
import sys
import textwrap

import pytest
import torch

import mmtok
from mmtok import PretrainedSpec, Registry, RegistryError
from mmtok.modalities import Scalars
from mmtok.plugins import PluginManager, reset_plugin_manager

GOOD = """
streams:
  tok_spectrum:
    modality: spectrum
    codec: spectrum-patch
    config: {size: [256], patch: [16]}
    vocab_size: 1000
    num_tokens: 16
  tok_scalars:
    modality: scalars
    codec: table-mlp
    config: {num_tokens: 3, quantizer: {kind: vq, codebook_size: 128}}
    vocab_size: 128
    num_tokens: 3
bundles:
  demo: {streams: [tok_spectrum, tok_scalars]}
"""


def write(tmp_path, text, name="registry.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_registry_resolves_and_builds(tmp_path):
    reg = Registry.load(write(tmp_path, GOOD))
    assert reg.check() == []
    codec = reg.codec("tok_scalars")
    assert codec.vocab_size == 128 and codec.num_tokens == 3 and not codec.training


def test_every_problem_is_reported(tmp_path):
    text = """
    streams:
      tok_a: {modality: mri_volume, codec: mri-fsq, vocab_size: 10, num_tokens: 1}
      tok_b: {modality: image, codec: spectrum-patch, vocab_size: 1000, num_tokens: 16}
      tok_c: {modality: spectrum, codec: spectrum-patch, vocab_size: 512, num_tokens: 8}
      tok_d: {modality: spectrum, codec: spectrum-patch, config: {patch: [7]}, vocab_size: 1, num_tokens: 1}
      tok_e: {modality: scalars, codec: table-mlp, vocab_size: 1000, num_tokens: 2, checkpoint: nowhere/codec}
    bundles:
      b1: {streams: [tok_a, tok_zz], heads: [mri-clip]}
    """
    problems = [str(p) for p in Registry.load(write(tmp_path, text)).check()]
    joined = "\n".join(problems)
    assert "streams.tok_a.modality: unknown modality 'mri_volume'" in joined
    assert "streams.tok_a.codec: unknown codec 'mri-fsq'" in joined
    assert "streams.tok_b.codec: codec 'spectrum-patch' tokenizes modality 'spectrum', not 'image'" in joined
    assert "streams.tok_c.vocab_size: declared 512" in joined and "has 1000" in joined
    assert "streams.tok_c.num_tokens: declared 8" in joined
    assert "streams.tok_d.config" in joined and "divisible" in joined
    assert "streams.tok_e.checkpoint" in joined and "nowhere/codec" in joined
    assert "bundles.b1.streams: unknown stream 'tok_zz'" in joined
    assert "bundles.b1.heads: unknown head 'mri-clip'" in joined
    assert len(problems) == 9


def test_schema_errors_duplicate_keys_and_extra_fields(tmp_path):
    text = """
    streams:
      tok_a: {modality: spectrum, codec: spectrum-patch, vocab_size: 1000, num_tokens: 16}
      tok_a: {modality: spectrum, codec: spectrum-patch, vocab_size: 1000, num_tokens: 16, colour: red}
    """
    with pytest.raises(RegistryError) as err:
        Registry.load(write(tmp_path, text))
    msg = str(err.value)
    assert "duplicate key 'tok_a'" in msg and "colour" in msg and "Extra inputs" in msg
    with pytest.raises(RegistryError, match="num_tokens.*Field required"):
        Registry.load(write(tmp_path, "streams:\n  tok_a: {modality: spectrum, codec: x, vocab_size: 3}\n"))


def test_checkpoint_path_and_named_pretrained(tmp_path):
    data = Scalars(values=torch.randn(64, 4))
    codec = mmtok.get_plugin_manager().build_codec("table-mlp", {"num_tokens": 2})
    mmtok.fit_codec(codec, data, steps=5, progress=False)
    codec.save_pretrained(tmp_path / "ckpt" / "table")

    class Shipped:  # a plugin that ships the checkpoint as package data
        @mmtok.hookimpl
        def mmtok_pretrained(self):
            return [PretrainedSpec("demo/table-fsq", tmp_path / "ckpt" / "table")]

    manager = PluginManager(entrypoints=False)
    manager.register(Shipped(), "demo")
    reset_plugin_manager(manager)
    text = """
    streams:
      tok_path: {modality: scalars, codec: table-mlp, vocab_size: 1000, num_tokens: 2, checkpoint: ckpt/table}
      tok_named: {modality: scalars, codec: table-mlp, vocab_size: 1000, num_tokens: 2, checkpoint: demo/table-fsq}
      tok_conflict: {modality: scalars, codec: table-mlp, config: {hidden: 16}, vocab_size: 1000, num_tokens: 2, checkpoint: demo/table-fsq}
      tok_wrong_codec: {modality: scalars, codec: scalar-quantile, vocab_size: 64, num_tokens: 4, checkpoint: demo/table-fsq}
    """
    reg = Registry.load(write(tmp_path, text))
    problems = "\n".join(map(str, reg.check()))
    assert "tok_path" not in problems and "tok_named" not in problems
    assert "tok_conflict.checkpoint: stream 'tok_conflict': config differs from checkpoint" in problems
    assert "['hidden']" in problems
    assert "tok_wrong_codec.checkpoint" in problems and "holds codec 'table-mlp'" in problems
    tokens = reg.codec("tok_named").encode(data)  # no training step needed
    assert torch.equal(tokens.ids, codec.encode(data).ids)


def test_cli_registry_check_exit_codes(tmp_path):
    good = write(tmp_path, GOOD, "good.yaml")
    run = subprocess.run([sys.executable, "-m", "mmtok.cli", "registry", "check", "--registry", str(good)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "all resolved" in run.stdout and "tok_scalars" in run.stdout
    bad = write(tmp_path, GOOD.replace("vocab_size: 128", "vocab_size: 100"), "bad.yaml")
    run = subprocess.run([sys.executable, "-m", "mmtok.cli", "registry", "check", "--registry", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "streams.tok_scalars.vocab_size: declared 100" in run.stderr
    run = subprocess.run([sys.executable, "-m", "mmtok.cli", "registry", "check", "--registry",
                          str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "not found" in run.stderr

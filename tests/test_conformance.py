"""The conformance kit passes every registered modality / codec and fails broken ones."""

import pytest
import torch
from torch import nn

import mmtok
from mmtok.codecs import SpectrumCodec, TableCodec
from mmtok.modalities import Scalars, Spectrum
from mmtok.testing import ConformanceError, check_codec, check_modality, check_plugin
from mmtok.tokens import TokenStream


def _manager():
    return mmtok.get_plugin_manager()


MODALITIES = sorted(mmtok.plugins.PluginManager().tables["modalities"])
CODECS = sorted(mmtok.plugins.PluginManager().tables["codecs"])


@pytest.mark.parametrize("name", MODALITIES)
def test_every_registered_modality_conforms(name):
    check_modality(_manager().modality(name))


@pytest.mark.parametrize("name", CODECS)
def test_every_registered_codec_conforms(name):
    check_codec(_manager().build_codec(name))


def test_builtin_plugin_conforms():
    import mmtok.builtin

    checked = check_plugin(mmtok.builtin)
    assert "codec:image-patch" in checked and "modality:volume" in checked


# --------------------------------------------------------------------- broken codecs
def spectrum_codec(cls=SpectrumCodec):
    return cls({"modality": "spectrum", "channels": 1, "size": [128], "patch": [8]}, modality=Spectrum)


class NoisyEncode(SpectrumCodec):
    """Adds fresh noise at encode time: not deterministic."""

    def preprocess(self, m):
        x = super().preprocess(m)
        return x + torch.randn_like(x)


class BatchStatistics(SpectrumCodec):
    """Normalises by the statistics of the batch it is given: tokens depend on the batch."""

    def preprocess(self, m):
        x = getattr(m, self.field)
        return (x - x.mean()) / (x.std() + 1e-6)


class ForgetsState(SpectrumCodec):
    """Keeps an essential scale outside the state dict: save/load changes the codec."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.register_buffer("gain", torch.ones(1), persistent=False)

    def fit_statistics(self, m):
        super().fit_statistics(m)
        self.gain.fill_(7.0)

    def preprocess(self, m):
        return super().preprocess(m) * self.gain


class NoShapeCheck(TableCodec):
    """Skips its input check: a wrong shape ends in a raw torch error."""

    def preprocess(self, m):
        return self.norm(m.values)


class IdsOutOfRange(SpectrumCodec):
    def encode(self, m):
        s = super().encode(m)
        return TokenStream(grid=s.grid, present=s.present, ids=s.ids + self.vocab_size,
                           vocab_size=s.vocab_size, codec=s.codec)


class WrongGrid(SpectrumCodec):
    @property
    def grid(self):
        return (4, 4)  # 16 tokens, but the stream grid is reported inconsistently below

    def encode(self, m):
        s = super().encode(m)
        return TokenStream(grid=(16,), present=s.present, ids=s.ids, vocab_size=s.vocab_size)


class DropsSamples(SpectrumCodec):
    def decode(self, stream, **fields):
        return super().decode(stream[:1])


class TrainModeDropout(SpectrumCodec):
    """Keeps dropout active at encode time."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.drop = nn.Dropout(0.5)

    def preprocess(self, m):
        return nn.functional.dropout(super().preprocess(m), 0.5, training=True)


@pytest.mark.parametrize("cls, match", [
    (NoisyEncode, "not deterministic|batch"),
    (BatchStatistics, "batch-dependent"),
    (ForgetsState, "save/load|reloaded"),
    (IdsOutOfRange, "outside"),
    (WrongGrid, "grid"),
    (DropsSamples, "shape"),
    (TrainModeDropout, "not deterministic|batch"),
])
def test_kit_fails_broken_spectrum_codecs(cls, match):
    with pytest.raises(ConformanceError, match=match):
        check_codec(spectrum_codec(cls))


def test_kit_fails_codec_with_raw_torch_error_on_bad_shape():
    codec = NoShapeCheck({"modality": "scalars", "columns": 4}, modality=Scalars)
    with pytest.raises(ConformanceError, match="raw"):
        check_codec(codec)


def test_kit_fails_broken_modality():
    from dataclasses import dataclass
    from typing import ClassVar

    from jaxtyping import Float
    from torch import Tensor

    @dataclass(frozen=True, eq=False)
    class WrongExample(mmtok.Modality):
        name: ClassVar[str] = "wrong_example"
        values: Float[Tensor, "b 3"]

        @classmethod
        def example(cls, batch_size=2, generator=None):
            return cls(values=torch.zeros(1, 3))  # ignores batch_size

    with pytest.raises(ConformanceError, match="batch size"):
        check_modality(WrongExample)

    @dataclass(eq=False)
    class NotFrozen(mmtok.Modality):
        name: ClassVar[str] = "not_frozen"
        values: Float[Tensor, "b 3"]

    with pytest.raises(ConformanceError, match="frozen"):
        check_modality(NotFrozen)


PLUGIN_SOURCE = '''
from mmtok import CodecSpec, hookimpl, Scalars
from mmtok.codecs import ScalarCodec        # a private module: plugins import `mmtok` only


@hookimpl
def mmtok_codecs():
    return [CodecSpec("leaky-quantile", "scalars", ScalarCodec, {"columns": 4, "num_bins": 8})]
'''


def test_kit_fails_a_plugin_that_imports_a_private_module(tmp_path, monkeypatch):
    pkg = tmp_path / "leaky_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("leaky_plugin.plugin")
    with pytest.raises(ConformanceError, match=r"plugin.py:3: imports mmtok.codecs"):
        check_plugin(module)
    # the same plugin through the public API passes
    (pkg / "plugin.py").write_text(PLUGIN_SOURCE.replace("from mmtok.codecs import ScalarCodec", "from mmtok import ScalarCodec"))
    assert check_plugin(importlib.reload(module)) == ["codec:leaky-quantile"]


class SilentlyCrops(SpectrumCodec):
    """Crops or zero-pads any spectrum to its size but does not say so (no decoded_shape)."""

    def to_tensor(self, m):
        x = m.values.float()[..., :self.config.size[0]]
        return torch.nn.functional.pad(x, (0, self.config.size[0] - x.shape[-1]))


def test_kit_fails_a_codec_that_silently_accepts_a_wrong_shape():
    with pytest.raises(ConformanceError, match="without error"):
        check_codec(spectrum_codec(SilentlyCrops))

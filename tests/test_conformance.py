"""The conformance kit passes every registered modality / codec and fails broken ones."""

import pytest
import torch
from torch import nn

import mmtok
from mmtok.codecs import CategoricalCodec, ScalarCodec, SpectrumCodec, TableCodec
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


# --------------------------------------------------------------------- decode round trip, tied values
def scalar_codec(cls=ScalarCodec, bins=16):
    return cls({"modality": "scalars", "columns": 4, "num_bins": bins}, modality=Scalars)


class ZerosDecode(ScalarCodec):
    """Decodes every stream to zeros: right shape, finite, and unrelated to the ids."""

    def values(self, ids):
        return torch.zeros(ids.shape)


class ZerosSpectrumDecoder(SpectrumCodec):
    """A network whose decoder ignores the codes."""

    def _decode(self, z_q):
        return torch.zeros(z_q.shape[0], 1, self.config.size[0])


class FirstColumnOnly(ScalarCodec):
    """Decodes every column from the first column's id: depends on the ids, but not as they say."""

    def values(self, ids):
        return super().values(ids[:, :1].expand_as(ids))


class TrustsAnyId(ScalarCodec):
    """Checks the stream's grid but not its ids: a bad id ends in a raw torch error."""

    def check_stream(self, stream):
        if tuple(stream.grid) != tuple(self.grid):
            raise mmtok.CodecError(f"grid {stream.grid} != {self.grid}")


class QuantileIgnoringTies(ScalarCodec):
    """The quantile codec before issue 14: tied values silently share a token."""

    def check_merged_bins(self, x, ids, names=None):
        pass


CONTINUOUS = {"modality": "spectrum", "channels": 1, "size": [128], "patch": [8], "quantizer": {"kind": "continuous"}}


@pytest.mark.parametrize("build, match", [
    (lambda: scalar_codec(ZerosDecode), "different ids but decode to the same 'values'"),
    (lambda: spectrum_codec(ZerosSpectrumDecoder), "different ids but decode to the same 'values'"),
    (lambda: ZerosSpectrumDecoder(CONTINUOUS, modality=Spectrum), "other continuous tokens .* decode to the same"),
    (lambda: scalar_codec(FirstColumnOnly), r"encode\(decode\(encode\(x\)\)\) gives back only \d+% of the ids"),
    (lambda: scalar_codec(TrustsAnyId), "an id of -1 raised a raw"),
], ids=["zeros-quantile", "zeros-network", "zeros-continuous", "first-column-only", "no-id-check"])
def test_kit_fails_a_decode_that_does_not_follow_the_ids(build, match):
    with pytest.raises(ConformanceError, match=match):
        check_codec(build())


def test_the_unbroken_codecs_of_these_failures_pass():
    check_codec(scalar_codec())
    check_codec(spectrum_codec())


def test_kit_fails_a_quantile_codec_that_collapses_tied_values_and_passes_the_categorical_codec():
    with pytest.raises(ConformanceError, match="tied values silently collapse"):
        check_codec(scalar_codec(QuantileIgnoringTies, bins=64))
    check_codec(scalar_codec(bins=64))  # refuses the tied data at fit: passes
    check_codec(CategoricalCodec({"modality": "scalars", "columns": 4}, modality=Scalars))  # keeps them apart

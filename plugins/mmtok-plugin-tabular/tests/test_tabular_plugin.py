"""The plugin passes mmtok's conformance kit, is discovered through its entry point, and every
codec encodes / decodes its modality's example with the right shapes."""

import dataclasses

import pytest
import torch

import mmtok
from mmtok.testing import check_plugin
from mmtok_plugin_tabular import plugin

MODALITIES = ["patient_demographics", "vital_signs", "lab_results", "table", "ecg_beat", "beat_class"]  # time_series: mmtok's own
CODECS = ["demographics-fsq", "vitals-quantile", "labs-fsq", "demographics-quantile", "labs-quantile",
          "table-quantile", "timeseries-fsq", "ecg-beat-fsq", "beat-class"]
PRETRAINED = ["tabular/diabetes-demographics-fsq", "tabular/diabetes-vitals-quantile",
              "tabular/diabetes-labs-fsq"]


def test_conformance_kit():
    checked = check_plugin(plugin, batch_size=3)
    for name in MODALITIES:
        assert f"modality:{name}" in checked
    for name in CODECS:
        assert f"codec:{name}" in checked
    for name in PRETRAINED:
        assert f"pretrained:{name}" in checked
    assert "reader:wfdb" in checked


def test_discovered_through_entry_point():
    manager = mmtok.get_plugin_manager()
    info = {p.name: p for p in manager.plugins}["tabular"]
    assert info.ok, info.errors
    assert info.package == "mmtok-plugin-tabular"
    assert info.provides["modalities"] == MODALITIES
    assert info.provides["codecs"] == CODECS
    assert info.provides["pretrained"] == PRETRAINED
    assert info.provides["readers"] == ["wfdb"]
    for name in PRETRAINED:
        path = manager.pretrained(name).path
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


@pytest.mark.parametrize("spec", plugin.mmtok_codecs(), ids=lambda s: s.name)
def test_codec_round_trip_shapes(spec):
    """Without the kit: build, fit statistics on example(), encode -> decode."""
    modality = {m.name: m for m in [*plugin.mmtok_modalities(), mmtok.TimeSeries]}[spec.modality]
    ex = modality.example(4, generator=torch.Generator().manual_seed(0))
    codec = spec.build(modality=modality)
    codec.fit_statistics(ex)
    codec.eval()
    stream = codec.encode(ex)
    assert stream.ids.shape == (4, codec.num_tokens)
    assert 0 <= int(stream.ids.min()) and int(stream.ids.max()) < codec.vocab_size
    others = {f.name: getattr(ex, f.name) for f in dataclasses.fields(ex) if f.name != "values"}
    out = codec.decode(stream, **others)
    assert type(out) is modality
    assert out.values.shape == codec.decoded_shape(ex)  # ecg-beat-fsq resamples 252 steps to 256
    assert torch.isfinite(out.values).all()
    assert torch.equal(codec.encode(ex).ids, stream.ids)  # deterministic


def test_examples_fit_default_configs():
    expected = {"demographics-fsq": (3, 2, 1000), "vitals-quantile": (1, 1, 64),
                "labs-fsq": (6, 3, 1000), "table-quantile": (4, 4, 64),
                "timeseries-fsq": (1, 8, 1000), "ecg-beat-fsq": (1, 16, 1000), "beat-class": (1, 1, 5)}
    manager = mmtok.get_plugin_manager()
    for name, (channels, tokens, vocab) in expected.items():
        codec = manager.build_codec(name)
        ex = codec.modality.example()
        assert ex.values.shape[1] == channels
        assert (codec.num_tokens, codec.vocab_size) == (tokens, vocab), name

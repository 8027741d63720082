"""Time series as users have them: any length (pad / crop / resample, with a validity mask), a
1-D array taken as one channel, clear errors otherwise."""

import numpy as np
import pytest
import torch

import mmtok
from mmtok import ModalityError, TimeSeries, TimeSeriesCodec
from mmtok.testing import check_codec


def codec(length: str, size: int = 64) -> TimeSeriesCodec:
    torch.manual_seed(0)
    return TimeSeriesCodec({"modality": "time_series", "channels": 1, "size": [size], "patch": [8],
                            "length": length})


def series(t: int, seed: int = 0) -> TimeSeries:
    g = torch.Generator().manual_seed(seed)
    return TimeSeries(values=torch.randn(2, 1, t, generator=g), time=torch.arange(t).float().expand(2, -1).clone())


def test_a_1d_array_is_one_channel_and_other_shapes_are_refused():
    m = TimeSeries.from_record({"data": np.arange(50.0)}, sample_id="r1")
    assert m.values.shape == (1, 1, 50)
    assert TimeSeries.from_record({"values": np.ones((3, 20))}).values.shape == (1, 3, 20)
    with pytest.raises(ModalityError, match=r"sample 'r1': TimeSeries.values: expected \(t,\) .*found shape \(2, 3, 4\)"):
        TimeSeries.from_record({"data": np.ones((2, 3, 4))}, sample_id="r1")


def test_exact_refuses_another_length_and_names_the_fix():
    with pytest.raises(ModalityError, match=r"has 50 steps, the codec takes 64 \(length: exact\); set length: pad"):
        codec("exact").encode(series(50))
    with pytest.raises(ModalityError, match="pad only lengthens"):
        codec("pad").encode(series(80))
    with pytest.raises(ModalityError, match=r"must be \(b, 1, t\) \(1 channel\), found \(2, 3, 64\)"):
        codec("exact").encode(TimeSeries(values=torch.zeros(2, 3, 64)))


@pytest.mark.parametrize("length,t", [("pad", 40), ("crop", 100), ("resample", 40), ("resample", 100)])
def test_every_policy_tokenizes_to_the_codecs_grid(length, t):
    c = codec(length)
    m = series(t)
    stream = c.encode(m)
    assert stream.ids.shape == (2, 8)
    out = c.decode_like(stream, m)
    assert out.values.shape == c.decoded_shape(m) == (2, 1, 64)
    target = c.reconstruction_target(m)
    assert target.shape == (2, 1, 64)
    if length == "crop":
        assert torch.equal(target, m.values[..., :64]) and torch.equal(out.time, m.time[:, :64])
    if length == "pad":  # the padded steps repeat the last one and are marked invalid
        assert torch.equal(target[..., :t], m.values) and torch.equal(target[..., t:], m.values[..., -1:].expand(-1, -1, 64 - t))
        assert out.valid[:, :t].all() and not out.valid[:, t:].any() and out.time is None
    if length == "resample":
        assert torch.allclose(target[..., 0], m.values[..., 0]) and torch.allclose(target[..., -1], m.values[..., -1])
    canon = c.canonical(m)
    assert canon.values.shape == (2, 1, 64) and TimeSeries.collate([canon, canon]).values.shape == (4, 1, 64)


def test_padded_steps_carry_no_reconstruction_loss():
    c = codec("pad")
    m = series(40)
    out = c(m)
    assert torch.equal(out.x_hat[..., 40:], out.x[..., 40:])  # no error there, so no loss and no gradient
    assert not torch.equal(out.x_hat[..., :40], out.x[..., :40])
    # a series's own mask counts too
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[:, :10] = False
    own = codec("exact")(TimeSeries(values=series(64).values, valid=mask))
    assert torch.equal(own.x_hat[..., :10], own.x[..., :10])


def test_the_builtin_codec_passes_the_conformance_kit():
    from mmtok import builtin

    spec = {s.name: s for s in builtin.mmtok_codecs()}["timeseries-patch"]
    torch.manual_seed(0)
    check_codec(spec.build(), TimeSeries.example(3, generator=torch.Generator().manual_seed(0)))
    padded = spec.build({"length": "pad"})
    check_codec(padded, series(40))

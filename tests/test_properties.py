"""Property-based checks (hypothesis) of invariants the rest of mmtok relies on."""

import warnings

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtok.codecs.scalar import ScalarCodec
from mmtok.errors import CodecError
from mmtok.modalities import Scalars
from mmtok.quantize import FSQConfig, build_quantizer
from mmtok.tokens import TokenStream


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_index_then_collate_is_identity(b, c, seed):
    x = torch.randn(b, c, generator=torch.Generator().manual_seed(seed))
    m = Scalars(values=x)
    assert torch.equal(Scalars.collate([m[i] for i in range(b)]).values, x)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=4, max_size=60),
       st.integers(2, 16))
def test_quantile_bins_are_monotone_and_decode_inside_the_data_range(values, k):
    x = torch.tensor(values, dtype=torch.float32).unsqueeze(1)
    q = ScalarCodec({"modality": "scalars", "columns": 1, "num_bins": k})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ties that only leave bins unused warn (tests/test_quantize.py)
        try:
            q.fit_statistics(Scalars(values=x))
        except CodecError as err:  # only ties can merge distinct values into one token: refused
            assert "tied values merge" in str(err) and len(set(values)) < len(values), err
            return
    order = torch.argsort(x[:, 0])
    ids = q.bins(x)[:, 0]
    assert bool((ids[order].diff() >= 0).all())  # larger value -> same or later bin
    assert int(ids.min()) >= 0 and int(ids.max()) < k
    dec = q.values(q.bins(x))
    assert float(dec.min()) >= float(x.min()) - 1e-3 and float(dec.max()) <= float(x.max()) + 1e-3


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(3, 8), min_size=1, max_size=4), st.integers(1, 3), st.integers(1, 9))
def test_fsq_ids_round_trip_for_any_levels(levels, b, n):
    q = build_quantizer(FSQConfig(levels=levels), dim=len(levels)).eval()
    z = torch.randn(b, n, len(levels))
    out = q.quantize(z)
    torch.testing.assert_close(q.ids_to_codes(out.ids), out.z_q, atol=1e-6, rtol=1e-6)
    for i in range(b):  # each vector is quantized on its own: no batch dependence
        assert torch.equal(q.quantize(z[i:i + 1]).ids, out.ids[i:i + 1])


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.integers(1, 4))
def test_token_stream_grid_must_match_count(grid, b):
    n = 1
    for g in grid:
        n *= g
    s = TokenStream(grid=tuple(grid), present=torch.ones(b, dtype=torch.bool),
                    ids=torch.zeros(b, n, dtype=torch.long), vocab_size=2)
    assert s.num_tokens == n

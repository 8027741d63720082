"""The chunked selective scan: equal to the sequential loop (values and all six gradients, float64,
lengths around and inside the chunk size), exact under adversarially large decays, and a
MambaBlock(scan="chunked") equal to mambapy's MambaBlock on the same weights."""

import pytest
import torch
from mambapy import mamba as mambapy

from mmtok_plugin_nir.model.mamba import (MambaBlock, selective_scan, selective_scan_chunked,
                                          selective_scan_sequential)


def _inputs(b, length, d, n, dtype=torch.float64, delta_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, length, d, dtype=dtype, generator=g)
    delta = delta_scale * torch.nn.functional.softplus(torch.randn(b, length, d, dtype=dtype, generator=g) - 1.0)
    A = -torch.exp(torch.randn(d, n, dtype=dtype, generator=g))
    B = torch.randn(b, length, n, dtype=dtype, generator=g)
    C = torch.randn(b, length, n, dtype=dtype, generator=g)
    D = torch.randn(d, dtype=dtype, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


def _values_and_grads(fn, inputs, seed=1):
    y = fn(*inputs)
    w = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed))
    return y, torch.autograd.grad((y * w).sum(), inputs)


@pytest.mark.parametrize(("length", "chunk"), [(1, None), (1, 4), (5, 1), (7, 4), (8, 4), (9, 4), (130, 16),
                                               (130, None), (257, 32)])
def test_chunked_equals_sequential(length, chunk):
    inputs = _inputs(2, length, 5, 3)
    y, grads = _values_and_grads(lambda *a: selective_scan_chunked(*a, chunk=chunk), inputs)
    y_ref, grads_ref = _values_and_grads(selective_scan_sequential, inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for name, a, b in zip("u delta A B C D".split(), grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"d{name}: {m}")


def test_chunked_gradcheck():
    inputs = _inputs(1, 11, 3, 2)
    assert torch.autograd.gradcheck(lambda *a: selective_scan_chunked(*a, chunk=4), inputs)


def test_chunked_exact_under_huge_decay():
    """delta * |A| up to ~1e4 per step (a trained A_log with a large delta): exp(-cumulative decay)
    would overflow any closed form (e^1e4); the chunked scan stays finite and equal to the loop."""
    u, delta, A, B, C, D = _inputs(2, 300, 6, 4)
    with torch.no_grad():
        delta.mul_(50.0)
        A.mul_(torch.logspace(-3, 2, 6, dtype=A.dtype).unsqueeze(1))      # |A| from 1e-3 to 1e2 per channel
    decay = (delta.detach().unsqueeze(-1) * A.detach().abs()).amax()
    assert decay > 1e3                                                    # the adversarial regime really
    inputs = [u, delta, A, B, C, D]
    y, grads = _values_and_grads(lambda *a: selective_scan_chunked(*a, chunk=64), inputs)
    y_ref, grads_ref = _values_and_grads(selective_scan_sequential, inputs)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # float32 too: the factors underflow to 0 instead of overflowing
    inputs32 = [t.detach().float().requires_grad_() for t in inputs]
    y32, grads32 = _values_and_grads(lambda *a: selective_scan_chunked(*a, chunk=64), inputs32)
    assert torch.isfinite(y32).all() and all(torch.isfinite(g).all() for g in grads32)
    torch.testing.assert_close(y32.double(), y_ref, rtol=1e-4, atol=1e-4)


def test_chunked_equals_parallel_float32_long():
    inputs = [t.detach().float().requires_grad_() for t in _inputs(2, 2048, 8, 4, seed=3)]
    y, grads = _values_and_grads(selective_scan_chunked, inputs)
    y_par, grads_par = _values_and_grads(selective_scan, inputs)
    torch.testing.assert_close(y, y_par, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, grads_par):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_chunked_rejects_bad_chunk():
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        selective_scan_chunked(*_inputs(1, 4, 2, 2), chunk=0)
    with pytest.raises(ValueError, match="scan must be one of"):
        MambaBlock(8, scan="fft")


@pytest.mark.parametrize("chunk", [None, 8])
def test_mamba_block_chunked_matches_mambapy(chunk):
    torch.manual_seed(0)
    cfg = mambapy.MambaConfig(d_model=16, n_layers=1, d_state=8, expand_factor=2, d_conv=4, pscan=True)
    ref = mambapy.MambaBlock(cfg)
    ours = MambaBlock(16, d_state=8, expand=2, d_conv=4, scan="chunked", chunk=chunk)
    assert ours.scan == "chunked" and MambaBlock(16).scan == "chunked"      # the default
    ours.load_state_dict(ref.state_dict())                                  # same names and shapes
    x = torch.randn(2, 37, 16)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    torch.testing.assert_close(y_ours, y_ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y_ours * w).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-4)
    grads_ref = {k: p.grad for k, p in ref.named_parameters()}
    for k, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads_ref[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def test_mamba_block_scans_agree_and_legacy_switch():
    torch.manual_seed(0)
    blocks = {scan: MambaBlock(16, d_state=8, scan=scan) for scan in ("chunked", "parallel", "sequential")}
    for b in blocks.values():
        b.load_state_dict(blocks["chunked"].state_dict())
    x = torch.randn(1, 50, 16)
    with torch.no_grad():
        ys = {scan: b(x) for scan, b in blocks.items()}
        torch.testing.assert_close(ys["parallel"], ys["chunked"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ys["sequential"], ys["chunked"], atol=1e-5, rtol=1e-5)
        assert MambaBlock(16, parallel=False).scan == "sequential"
        legacy = blocks["chunked"]
        legacy.parallel = False                                   # what the pretraining benchmark does
        torch.testing.assert_close(legacy(x), ys["sequential"])

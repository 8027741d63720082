"""Quantizer adapters over vector-quantize-pytorch: one interface, the library's pitfalls handled."""

import pytest
import torch
from vector_quantize_pytorch import FSQ

from mmtok.errors import CodecError
from mmtok.quantize import (ContinuousConfig, FSQConfig, LFQConfig, ResidualVQConfig, VQConfig,
                            build_quantizer)

CONFIGS = {
    "fsq": FSQConfig(levels=[8, 5, 5, 5]),
    "vq": VQConfig(codebook_size=64),
    "lfq": LFQConfig(codebook_size=64),
    "rvq": ResidualVQConfig(num_quantizers=3, codebook_size=32),
}
VOCAB = {"fsq": 1000, "vq": 64, "lfq": 64, "rvq": 32}


@pytest.fixture(params=sorted(CONFIGS))
def q(request):
    torch.manual_seed(0)
    quantizer = build_quantizer(CONFIGS[request.param], dim=16)
    quantizer.train()
    quantizer.quantize(torch.randn(4, 32, 16))  # one training step initialises codebooks
    return quantizer.eval()


def test_shapes_vocab_and_ids_to_codes(q):
    z = torch.randn(2, 10, 16)
    out = q.quantize(z)
    assert out.z_q.shape == z.shape and out.z_q.dtype == z.dtype
    assert out.ids.shape == (2, 10 * q.depth) and out.ids.dtype == torch.long
    assert 0 <= int(out.ids.min()) and int(out.ids.max()) < q.vocab_size
    assert out.aux_loss.shape == ()
    # codes decode *with* the output projection: the same vectors the decoder saw
    torch.testing.assert_close(q.ids_to_codes(out.ids), out.z_q, atol=1e-5, rtol=1e-5)


def test_vocab_sizes():
    for kind, cfg in CONFIGS.items():
        assert build_quantizer(cfg, 16).vocab_size == VOCAB[kind]


def test_eval_is_deterministic(q):
    z = torch.randn(3, 12, 16)
    a, b = q.quantize(z), q.quantize(z)
    assert torch.equal(a.ids, b.ids)


def test_quantization_runs_in_fp32_under_cpu_autocast(q):
    z = torch.randn(2, 10, 16).bfloat16().float()  # exactly representable in bf16
    ref = q.quantize(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q.quantize(z.bfloat16())
    assert out.z_q.dtype == torch.bfloat16  # returned in the caller's dtype
    assert torch.equal(out.ids, ref.ids)  # but quantized in fp32: same ids


def test_channel_first_inputs_are_refused(q):
    with pytest.raises(CodecError, match=r"channel-last"):
        q.quantize(torch.randn(2, 16, 4, 4))


def test_ids_out_of_range_are_refused(q):
    with pytest.raises(CodecError, match=r"must lie in"):
        q.ids_to_codes(torch.full((1, 4 * q.depth), q.vocab_size))


def test_library_fsq_treats_4d_as_channel_first_which_is_why_we_pass_3d():
    # documents the pitfall the adapter avoids: a (b, h, w, d) channel-last image is misread
    fsq = FSQ(levels=[8, 5, 5, 5], dim=4)
    x = torch.randn(2, 3, 3, 4)
    with pytest.raises(AssertionError, match="expected dimension of 4"):
        fsq(x)  # treated as (b, d=3, h, w) -> the library's own assert fires


def test_residual_vq_has_no_quantize_dropout_in_eval():
    q = build_quantizer(ResidualVQConfig(num_quantizers=4, codebook_size=16), dim=8)
    q.impl.quantize_dropout = True  # even if enabled, eval must use all levels
    q.eval()
    z = torch.randn(2, 5, 8)
    assert torch.equal(q.quantize(z).ids, q.quantize(z).ids)


def test_continuous_is_identity():
    q = build_quantizer(ContinuousConfig(), dim=8)
    z = torch.randn(2, 5, 8)
    out = q.quantize(z)
    assert out.ids is None and torch.equal(out.z_q, z) and not q.is_discrete
    with pytest.raises(CodecError, match="continuous"):
        q.ids_to_codes(torch.zeros(2, 5, dtype=torch.long))


def test_fsq_level_two_is_rejected_clearly():
    with pytest.raises(CodecError, match=">= 3"):
        build_quantizer(FSQConfig(levels=[2, 5]), 4)

"""Quantizer adapters over vector-quantize-pytorch: one interface, the library's pitfalls handled;
quantile bins and tied values."""

import csv
import warnings
from pathlib import Path

import pytest
import torch
from vector_quantize_pytorch import FSQ

from mmtok.codecs import ScalarCodec
from mmtok.errors import CodecError
from mmtok.modalities import Scalars
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


# --------------------------------------------------------------------- tied values in quantile bins
def clinic_columns(*names) -> Scalars:
    """Columns of the clinic example's 442 real patients."""
    with open(Path(__file__).resolve().parents[1] / "examples" / "clinic" / "data" / "patients.csv") as f:
        rows = list(csv.DictReader(f))
    return Scalars(values=torch.tensor([[float(r[c]) for c in names] for r in rows]))


def test_quantile_codec_refuses_tied_labels_and_warns_on_tied_bins(corn):
    """The collapses of issue 14 are refused with a pointer to the categorical codec; a
    continuous column whose ties leave many bins unused (the clinic's s4: half) is warned about,
    one that loses a few (corn moisture: 62 of 64 bins) is not."""
    def quantile(values, bins):
        codec = ScalarCodec({"modality": "scalars", "columns": values.shape[1], "num_bins": bins})
        codec.fit_statistics(Scalars(values=values))
        return codec

    sex = clinic_columns("sex").values  # 235 : 207, 442 patients
    balanced = torch.tensor([0.0] * 51 + [1.0] * 50)[:, None]
    eighty = torch.tensor([0.0] * 80 + [1.0] * 20)[:, None]
    for values, bins in ((sex, 2), (balanced, 2), (eighty, 4)):
        with pytest.raises(CodecError, match=r"column 0 has 2 distinct training values .* only 1 of "
                                             rf"{bins} tokens.*'categorical' codec"):
            quantile(values, bins)
    assert quantile(sex, 16).encode(Scalars(values=sex)).ids.unique().tolist() == [8, 15]  # 2 values, 2 ids
    with pytest.warns(UserWarning, match=r"column 3: tied training values merge quantile bins; its 66 distinct "
                                         r"values use only 8 of 16 tokens"):
        quantile(clinic_columns("s1", "s2", "s3", "s4").values, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantile(clinic_columns("bmi").values, 16)  # no ties that matter: silent
        quantile(torch.tensor(corn["propvals"], dtype=torch.float32), 64)


def test_quantile_edges_between_adjacent_floats_keep_them_apart():
    """A bin edge between two distinct float32 values is rounded up, not onto the lower value
    (which would put both in one bin, and be refused as if they were tied)."""
    two = torch.tensor(2.0)
    x = torch.stack([torch.tensor(0.0), torch.tensor(1.0), two, torch.nextafter(two, torch.tensor(3.0))])[:, None]
    codec = ScalarCodec({"modality": "scalars", "columns": 1, "num_bins": 4})  # an edge 1/4 ulp above 2
    codec.fit_statistics(Scalars(values=x))
    assert codec.encode(Scalars(values=x)).ids[:, 0].tolist() == [0, 1, 2, 3]

"""The report-wordllama codec: frozen WordLlama line embeddings, offline, pinned by sha256."""

from pathlib import Path

import pytest
import torch

import mmtok
from mmtok import CodecError
from mmtok_plugin_ct import ReportText
from mmtok_plugin_ct.model.encoder import CTEncoderConfig, CTReportAligner
from mmtok_plugin_ct.report_embedding import WORDLLAMA_SHA256

REPORTS = Path(__file__).resolve().parents[3] / "examples" / "ct" / "reports"


def _codec(**config):
    return mmtok.get_plugin_manager().build_codec("report-wordllama", config or None)


def test_real_reports_give_unit_line_tokens_and_decode_by_retrieval():
    texts = [(REPORTS / f).read_text() for f in ("abdomen_nifti.txt", "abdomen_dicom.txt")]
    codec = _codec()
    codec.fit_statistics(ReportText.from_texts(texts))
    s = codec.encode(ReportText.from_texts(texts))
    assert s.values.shape == (2, 8, 256) and not s.is_discrete
    norms = s.values.norm(dim=-1)
    lines = [len(t.strip().splitlines()) for t in texts]  # 7 and 4 lines
    for i, n in enumerate(lines):
        assert torch.allclose(norms[i, :n], torch.ones(n), atol=1e-5) and bool((norms[i, n:] == 0).all())
    # same impression template, different organs: similar but not equal; a line is nearest itself
    cos = s.values[0, 0] @ s.values[1, 0]
    assert 0.5 < float(cos) < 0.999
    decoded = codec.decode(s).texts()
    assert [d.splitlines() for d in decoded] == [t.strip().splitlines() for t in texts]
    assert codec.config.weights_sha256 == WORDLLAMA_SHA256


def test_fingerprint_pins_the_weights_and_errors_are_clear():
    a, b = _codec(), _codec(dim=128)
    assert a.fingerprint() != b.fingerprint() and b.token_dim == 128
    with pytest.raises(CodecError, match="sha256"):
        _codec(weights_sha256="0" * 64)
    with pytest.raises(CodecError, match="no text bank"):
        a.decode(a.encode(ReportText.example(2)))
    with pytest.raises(mmtok.ModalityError, match="report 0 has 2 lines"):
        _codec(num_tokens=1, truncate=False).encode(ReportText.example(1))


def test_aligner_trains_on_frozen_line_embeddings():
    codec = _codec(num_tokens=4)
    texts = ["CT slab showing liver.\nliver: large portion.", "CT slab showing spleen.\nspleen: small portion."]
    emb = codec.encode(ReportText.from_texts(texts * 2)).values
    config = CTEncoderConfig(img_size=(4, 32, 32), patch_size=(4, 16, 16), embed_dim=32, depth=1, num_heads=2,
                             shared_dim=16, text_input="embeddings", text_embed_dim=256, text_max_tokens=4,
                             text_depth=1, mask_hidden=8)
    model = CTReportAligner(config)
    vol, regions = torch.rand(4, 1, 4, 32, 32), torch.randint(0, 20, (4, 1, 4, 32, 32))
    step_region = torch.tensor([[-1, 1, -1, -1], [-1, 2, -1, -1]] * 2)
    out = model(vol, regions, emb, None, step_region)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.text.adapter[0].weight.grad is not None
    assert model.embed_texts(emb, None).shape == (4, 16)

"""SpectralFM components: shapes, the parallel scan against the loop, the Mamba block against
mambapy, MoE routing, LoRA, FNO resolution, VIB, the losses (Sinkhorn against POT), pretraining,
test-time training and save / load."""

import numpy as np
import ot
import pytest
import pywt
import torch
from mambapy import mamba as mambapy
from torch import nn

from mmtok_plugin_nir.model.embedding import WaveletEmbedding, block_mask, dwt
from mmtok_plugin_nir.model.heads import FNOTransferHead, RegressionHead, SpectralConv1d, VIBHead
from mmtok_plugin_nir.model.losses import (LOSS_WEIGHTS, byol_loss, cv_squared, log_sinkhorn, msrp_loss,
                                           physics_loss, physics_terms, sinkhorn_loss, total_loss)
from mmtok_plugin_nir.model.mamba import (MambaBackbone, MambaBlock, parallel_scan, selective_scan,
                                          selective_scan_sequential)
from mmtok_plugin_nir.model.moe import MixtureOfExperts
from mmtok_plugin_nir.model.spectralfm import SpectralFM, SpectralFMConfig, SpectralFMOutput
from mmtok_plugin_nir.model.transformer import LoRALinear, TransformerEncoder
from mmtok_plugin_nir.model.ttt import test_time_train as run_ttt

TINY = SpectralFMConfig(n_points=256, d_model=32, n_mamba_layers=2, d_state=8, n_transformer_layers=1,
                        n_heads=4, z_chem=16, z_inst=8, n_instruments=3, fno_modes=8, fno_width=8)
L = TINY.n_points
P = L // TINY.patch_size
WL = torch.linspace(1100.0, 2498.0, L)


def spectra(b: int, n: int = L) -> torch.Tensor:
    """Smooth SNV-normalised test spectra: a few Gaussian bands on a sloped baseline."""
    t = torch.linspace(0, 1, n)
    centres, widths, heights = torch.rand(b, 3, 1), 0.02 + 0.05 * torch.rand(b, 3, 1), torch.rand(b, 3, 1)
    x = (heights * torch.exp(-0.5 * ((t - centres) / widths) ** 2)).sum(1) + torch.rand(b, 1) * t
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)


def tiny_model() -> SpectralFM:
    return SpectralFM(TINY)


# ---------------------------------------------------------------- embedding
@pytest.mark.filterwarnings("ignore:Level value")
def test_dwt_matches_pywt_periodization():
    for wavelet, n in [("db4", 256), ("db2", 100), ("sym4", 37)]:
        w = pywt.Wavelet(wavelet)
        filters = torch.tensor(np.array([w.dec_lo[::-1], w.dec_hi[::-1]]))[:, None]
        x = torch.randn(3, n, dtype=torch.float64)
        ours = dwt(x, filters, 3, mode="periodic")
        ref = pywt.wavedec(x.numpy(), wavelet, mode="periodization", level=3, axis=-1)
        assert [c.shape[-1] for c in ours] == [c.shape[-1] for c in ref]
        for a, r in zip(ours, ref):
            np.testing.assert_allclose(a.numpy(), r, atol=1e-12)
    # the symmetric extension only changes the coefficients near the two ends
    x = torch.randn(2, 256, dtype=torch.float64)
    w = pywt.Wavelet("db4")
    filters = torch.tensor(np.array([w.dec_lo[::-1], w.dec_hi[::-1]]))[:, None]
    sym, per = dwt(x, filters, 1, "symmetric"), dwt(x, filters, 1, "periodic")
    torch.testing.assert_close(sym[1][:, 4:-4], per[1][:, 4:-4])
    assert not torch.allclose(sym[1][:, :2], per[1][:, :2])


def test_wavelet_embedding_shapes_and_wavenumber_code():
    emb = WaveletEmbedding(d_model=32, patch_size=16, levels=4)
    x, domain = spectra(3), torch.tensor([0, 1, 2])
    tokens = emb(x, WL, domain)
    assert tokens.shape == (3, 2 + P, 32) and emb.n_patches(L) == P
    assert emb.wavelet_features(x).shape == (3, P, 2 * 4 + 1)
    torch.testing.assert_close(emb(x, WL.expand(3, L), domain), tokens)
    # physics-aware: the same values on another wavelength axis give other position codes
    assert not torch.allclose(emb(x, WL + 300.0, domain)[:, 2:], tokens[:, 2:])
    # CLS is shared, DOMAIN differs per domain id
    torch.testing.assert_close(tokens[0, 0], tokens[1, 0])
    assert not torch.allclose(tokens[0, 1], tokens[1, 1])
    tokens.sum().backward()
    assert emb.patch.weight.grad is not None and emb.domain_embed.weight.grad is not None
    with pytest.raises(ValueError):
        emb(torch.randn(2, 250), torch.linspace(1100, 2500, 250), torch.zeros(2, dtype=torch.long))


def test_block_mask_contiguous_and_masked_samples_hidden():
    g = torch.Generator().manual_seed(3)
    mask = block_mask(8, 32, 0.4, g)
    assert mask.shape == (8, 32) and mask.dtype == torch.bool
    torch.testing.assert_close(mask, block_mask(8, 32, 0.4, torch.Generator().manual_seed(3)))
    for row in mask.tolist():
        assert 13 <= sum(row) < 32
        runs = "".join("1" if v else "0" for v in row).replace("0", " ").split()
        assert all(len(r) >= 3 for r in runs)  # only blocks of >= 3 adjacent patches
    # what lies under the mask cannot reach any token
    emb = WaveletEmbedding(d_model=32, patch_size=16)
    x, domain = spectra(2), torch.zeros(2, dtype=torch.long)
    m = block_mask(2, P, 0.3, g)
    x2 = x.clone()
    x2[m.repeat_interleave(16, dim=1)] += 5.0
    torch.testing.assert_close(emb(x, WL, domain, m), emb(x2, WL, domain, m))
    masked_tokens = emb(x, WL, domain, m)[:, 2:][m]
    pos = emb.pos(emb.wavenumber_code(WL).float()).expand(2, P, 32)[m]
    torch.testing.assert_close(masked_tokens - pos, emb.mask_token.expand_as(masked_tokens))


# ---------------------------------------------------------------- selective scan / Mamba
def _scan_inputs(b, length, d, n, dtype=torch.float64):
    u = torch.randn(b, length, d, dtype=dtype)
    delta = torch.nn.functional.softplus(torch.randn(b, length, d, dtype=dtype) - 1.0)
    A = -torch.exp(torch.randn(d, n, dtype=dtype))
    B, C = torch.randn(b, length, n, dtype=dtype), torch.randn(b, length, n, dtype=dtype)
    D = torch.randn(d, dtype=dtype)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("length", [1, 2, 3, 7, 64, 130, 2048])
def test_parallel_scan_equals_sequential(length, recompute):
    inputs = _scan_inputs(2, length, 4, 4)
    y_par, y_seq = selective_scan(*inputs, recompute=recompute), selective_scan_sequential(*inputs)
    torch.testing.assert_close(y_par, y_seq, rtol=1e-6, atol=1e-9)
    w = torch.randn_like(y_par)
    g_par = torch.autograd.grad((y_par * w).sum(), inputs, allow_unused=True, materialize_grads=True)
    g_seq = torch.autograd.grad((y_seq * w).sum(), inputs, allow_unused=True, materialize_grads=True)
    for a, b in zip(g_par, g_seq):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_selective_scan_gradcheck():
    u, delta, A, B, C, D = _scan_inputs(1, 9, 3, 2)
    assert torch.autograd.gradcheck(selective_scan, (u, delta, A, B, C, D))


def test_parallel_scan_long_sequence_stable_in_float32():
    a = torch.rand(1, 2048, 3).clamp(min=0.5)          # slowly decaying state over 2048 steps
    x = torch.randn(1, 2048, 3)
    h = parallel_scan(a, x)
    ref = torch.zeros(1, 3, dtype=torch.float64)
    refs = []
    for t in range(2048):
        ref = a[:, t].double() * ref + x[:, t].double()
        refs.append(ref)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h.double(), torch.stack(refs, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pscan", [True, False])
def test_mamba_block_matches_mambapy(pscan):
    cfg = mambapy.MambaConfig(d_model=16, n_layers=2, d_state=8, expand_factor=2, d_conv=4, pscan=pscan)
    ref = mambapy.MambaBlock(cfg)
    ours = MambaBlock(16, d_state=8, expand=2, d_conv=4)
    ours.load_state_dict(ref.state_dict())                  # same names and shapes
    x = torch.randn(2, 37, 16)
    with torch.no_grad():
        expected = ref(x)
        for parallel, recompute in [(True, True), (True, False), (False, True)]:
            ours.parallel, ours.recompute = parallel, recompute
            torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
    # the residual stack uses mambapy.Mamba's layer names too (plus a final norm)
    ref_stack = mambapy.Mamba(cfg)
    backbone = MambaBackbone(16, n_layers=2, d_state=8)
    missing = backbone.load_state_dict(ref_stack.state_dict(), strict=False)
    assert missing.missing_keys == ["norm_f.weight"] and not missing.unexpected_keys
    backbone.norm_f = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), ref_stack(x), atol=1e-5, rtol=1e-5)


def test_mamba_backbone_shapes_and_grads():
    backbone = MambaBackbone(32, n_layers=2, d_state=8)
    x = torch.randn(2, 18, 32, requires_grad=True)
    y = backbone(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backbone.parameters())
    # causal: the past does not depend on the future
    x2 = x.detach().clone()
    x2[:, 10:] += 1.0
    torch.testing.assert_close(backbone(x2)[:, :10], y[:, :10].detach())


# ---------------------------------------------------------------- MoE
def test_moe_top2_routing_and_dispatch():
    moe = MixtureOfExperts(8, n_experts=4, top_k=2)
    x = torch.randn(3, 5, 8)
    out, aux = moe(x)
    assert out.shape == x.shape
    idx = aux["expert_index"]
    assert idx.shape == (15, 2) and (idx[:, 0] != idx[:, 1]).all()   # exactly 2 distinct experts
    torch.testing.assert_close(aux["expert_fraction"].sum(), torch.tensor(1.0))
    counts = torch.bincount(idx.flatten(), minlength=4).float()
    torch.testing.assert_close(aux["expert_fraction"], counts / 30)
    # the sparse dispatch equals the dense "run every expert, keep the top 2" reference
    flat = x.reshape(-1, 8)
    logits = moe.gate(flat)
    top, top_i = logits.topk(2, dim=-1)
    w = torch.zeros_like(logits).scatter(1, top_i, top.softmax(-1))
    dense = sum(w[:, e:e + 1] * moe.experts[e](flat) for e in range(4))
    torch.testing.assert_close(out.reshape(-1, 8), dense, atol=1e-6, rtol=1e-5)
    aux["load_balance_loss"].backward()
    assert moe.gate.weight.grad.abs().sum() > 0


def test_moe_balance_loss_zero_when_balanced():
    moe = MixtureOfExperts(4, n_experts=4, top_k=2)
    with torch.no_grad():
        moe.gate.weight.copy_(torch.eye(4))
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    with torch.no_grad():
        _, aux = moe(x)
    torch.testing.assert_close(aux["expert_fraction"], torch.full((4,), 0.25))
    assert float(aux["load_balance_loss"]) < 1e-10
    with torch.no_grad():
        _, aux = moe(torch.tensor([[5.0, 5.0, 0.0, 0.0]] * 4))     # everything to experts 0, 1
    assert float(aux["load_balance_loss"]) > 0.5
    assert float(cv_squared(torch.ones(4))) == 0.0


# ---------------------------------------------------------------- transformer / LoRA
def test_lora_wraps_only_qkv_and_starts_as_identity():
    enc = TransformerEncoder(16, n_layers=2, n_heads=4)
    x = torch.randn(2, 7, 16)
    y0 = enc(x)
    params = enc.add_lora(rank=4, alpha=16)
    torch.testing.assert_close(enc(x), y0)                            # B = 0 at init
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    expected = {f"layers.{i}.{proj}.lora_{m}" for i in range(2) for proj in "qkv" for m in "AB"}
    assert trainable == expected and len(params) == 12
    assert len(enc.lora_parameters()) == 12
    for layer in enc.layers:
        assert all(isinstance(getattr(layer, p), LoRALinear) for p in "qkv")
        assert type(layer.o) is nn.Linear and all(not isinstance(m, LoRALinear) for m in layer.mlp)
    # training moves the output; merging keeps it
    with torch.no_grad():
        for layer in enc.layers:
            layer.q.lora_B.normal_()
    y1 = enc(x)
    assert not torch.allclose(y1, y0)
    merged = enc.layers[0].q.merge()
    torch.testing.assert_close(merged(x), enc.layers[0].q(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError):
        enc.add_lora()


def test_spectralfm_add_lora_trains_only_adapters():
    model = tiny_model()
    model.add_lora(rank=8, alpha=16)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and n.startswith("transformer.") for n in trainable)
    assert model.num_parameters(trainable_only=True) == 3 * (2 * 8 * 32) * TINY.n_transformer_layers


# ---------------------------------------------------------------- heads
def test_fno_head_any_resolution():
    head = FNOTransferHead(z_dim=16, width=8, modes=8)
    z = torch.randn(3, 16)
    for n in (700, 2048, 4096):
        assert head(z, n_out=n).shape == (3, n)
    # a spectral layer evaluates one band-limited function on whichever grid is asked for
    conv = SpectralConv1d(4, 5, modes=6)
    v = torch.randn(2, 4, 64)
    fine, coarse = conv(v, n_out=200), conv(v, n_out=100)
    assert fine.shape == (2, 5, 200)
    torch.testing.assert_close(fine[..., ::2], coarse, atol=1e-5, rtol=1e-4)
    assert RegressionHead(16, 2)(z).shape == (3, 2) and RegressionHead(16, 1, hidden=0)(z).shape == (3, 1)


def test_vib_head():
    vib = VIBHead(32, z_chem=16, z_inst=8)
    cls = torch.randn(5, 32)
    vib.train()
    with torch.no_grad():
        out = vib(cls)
    assert out.z_chem.shape == (5, 16) and out.z_inst.shape == (5, 8)
    assert float(out.kl) >= 0 and not torch.allclose(out.z_chem, out.mu_chem)
    vib.eval()
    with torch.no_grad():
        out = vib(cls)
    torch.testing.assert_close(out.z_chem, out.mu_chem)
    torch.testing.assert_close(out.z_inst, out.mu_inst)
    with torch.no_grad():
        for p in vib.parameters():
            p.zero_()
        assert float(vib(cls).kl) == 0.0                                   # posterior = prior


# ---------------------------------------------------------------- losses
def test_sinkhorn_log_domain_matches_pot():
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randn(9, 4, dtype=torch.float64) + 0.3
    M = torch.cdist(x, y).pow(2) / 4
    a, b = torch.full((6,), 1 / 6, dtype=torch.float64), torch.full((9,), 1 / 9, dtype=torch.float64)
    ref = ot.sinkhorn2(a.numpy(), b.numpy(), M.numpy(), 0.05, numItermax=5000, stopThr=1e-12)
    ours = log_sinkhorn(a, b, M, reg=0.05, n_iter=2000)
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)
    np.testing.assert_allclose(float(sinkhorn_loss(x, y, n_iter=2000, use_pot=False)), float(ref), rtol=1e-6)
    # the POT path stays differentiable for torch tensors
    xg = x.clone().requires_grad_()
    sinkhorn_loss(xg, y, n_iter=200, use_pot=True).backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


@pytest.mark.parametrize("use_pot", [False, None])
def test_sinkhorn_identical_vs_shifted(use_pot):
    x = torch.randn(16, 32)                                            # float32, reg 0.05: log domain
    same, shifted = sinkhorn_loss(x, x, use_pot=use_pot), sinkhorn_loss(x, x + 1.0, use_pot=use_pot)
    assert torch.isfinite(same) and torch.isfinite(shifted)
    assert float(same) < 0.01 * float(shifted)
    torch.testing.assert_close(shifted, torch.tensor(1.0), rtol=1e-3, atol=1e-3)


def test_simple_losses():
    target, pred = torch.randn(2, 64), torch.randn(2, 64)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = True
    torch.testing.assert_close(msrp_loss(pred, target, mask), (pred[0, 16:32] - target[0, 16:32]).pow(2).mean())
    pred2 = pred.clone()
    pred2[1] += 10.0                                                     # unmasked: no effect
    torch.testing.assert_close(msrp_loss(pred2, target, mask), msrp_loss(pred, target, mask))
    p, z = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None                         # stop-grad on the target
    torch.testing.assert_close(byol_loss(z, z), torch.tensor(-1.0))
    t = torch.linspace(0, 1, 200)
    smooth = torch.exp(-0.5 * ((t - 0.5) / 0.1) ** 2)[None]
    spiky = smooth.clone()
    spiky[0, 50] += 0.5
    assert float(physics_loss(spiky)) > 100 * float(physics_loss(smooth))
    terms = physics_terms(smooth - 2.0, mean=torch.zeros(1), std=torch.ones(1))
    assert float(terms["nonnegativity"]) > 1.0 and float(physics_terms(smooth)["nonnegativity"]) == 0.0
    losses = {k: torch.tensor(1.0) for k in LOSS_WEIGHTS}
    torch.testing.assert_close(total_loss({**losses, "total": torch.tensor(5.0)}),
                               torch.tensor(sum(LOSS_WEIGHTS.values())))


# ---------------------------------------------------------------- SpectralFM
def test_config_dict_round_trip_and_sizes():
    cfg = SpectralFMConfig()
    assert SpectralFMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        SpectralFMConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    assert 1.0e6 < SpectralFM(cfg).num_parameters() < 3.0e6
    assert 9.0e6 < SpectralFM(SpectralFMConfig.card()).num_parameters() < 11.0e6


def test_spectralfm_forward_shapes_and_cached_backbone():
    model = tiny_model().eval()
    x, domain = spectra(3), torch.tensor([0, 0, 1])
    out = model(x, WL, domain)
    assert isinstance(out, SpectralFMOutput)
    assert out.tokens.shape == (3, 2 + P, 32) and out.cls.shape == (3, 32)
    assert out.z_chem.shape == (3, 16) and out.z_inst.shape == (3, 8)
    assert out.mu.shape == (3, 24) and out.logvar.shape == (3, 24)
    assert out.patch_recon.shape == (3, L) and out.instrument_logits.shape == (3, 3)
    assert out.kl.shape == () and "load_balance_loss" in out.moe_aux
    torch.testing.assert_close(model.features(x, WL, domain), out.mu_chem)
    cached = model.backbone_tokens(x, WL, domain)
    assert cached.shape == (3, 2 + P, 32)
    torch.testing.assert_close(model.head_from_backbone(cached).mu_chem, out.mu_chem)
    assert model.transfer_spectrum(out.z_chem).shape == (3, L)
    assert model.transfer_spectrum(out.z_chem, n_out=700).shape == (3, 700)
    mask = block_mask(3, P, 0.3)
    assert model(x, WL, domain, mask).patch_recon.shape == (3, L)
    norms = model.norm_parameters()
    n_norms = (TINY.n_mamba_layers + 1) + 2 + (4 * TINY.n_transformer_layers + 2)
    assert len(norms) == n_norms                                   # RMSNorm: weight; LayerNorm: w + b


def _batch(b=4, instruments=(0, 0, 1, 1)):
    clean = spectra(b)
    return {"clean": clean, "view1": clean * 1.02 + 0.01 * torch.randn(b, L),
            "view2": clean * 0.98 + 0.01 * torch.randn(b, L), "noisy": clean + 0.05 * torch.randn(b, L),
            "mask": block_mask(b, P, 0.3), "wavelength_nm": WL, "domain": torch.zeros(b, dtype=torch.long),
            "instrument": torch.tensor(instruments)}


def test_pretrain_losses_all_seven_finite_with_grads():
    model = tiny_model().train()
    losses = model.pretrain_losses(_batch())
    assert set(losses) == set(LOSS_WEIGHTS) | {"total"}
    for name, value in losses.items():
        assert value.shape == () and torch.isfinite(value), name
        assert value.requires_grad, name
    assert losses["ot"].item() > 0
    params = [p for p in model.parameters() if p.requires_grad]
    for name in LOSS_WEIGHTS:
        grads = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
    torch.testing.assert_close(losses["total"], total_loss(losses))
    # one instrument in the batch: no OT term
    assert model.pretrain_losses(_batch(instruments=(2, 2, 2, 2)))["ot"].item() == 0.0


def test_test_time_training_updates_only_norm_parameters():
    model = tiny_model()
    model.add_lora(rank=4)                                         # flags must come back as they were
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norm_names = {n for n, p in model.named_parameters() if any(p is q for q in model.norm_parameters())}
    curve = run_ttt(model, spectra(4), WL, torch.zeros(4, dtype=torch.long), steps=3, lr=1e-2,
                            generator=torch.Generator().manual_seed(0))
    assert len(curve) == 3 and all(np.isfinite(curve))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= norm_names
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training


def test_save_load_round_trip(tmp_path):
    model = tiny_model().eval()
    x, domain = spectra(2), torch.tensor([0, 1])
    path = model.save(tmp_path / "spectralfm.safetensors")
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    loaded = SpectralFM.load(path)
    assert loaded.config == TINY and not loaded.training
    torch.testing.assert_close(loaded(x, WL, domain).patch_recon, model(x, WL, domain).patch_recon, rtol=0, atol=0)
    torch.testing.assert_close(loaded.features(x, WL, domain), model.features(x, WL, domain), rtol=0, atol=0)
    # with LoRA adapters (trained a little)
    model.add_lora(rank=4)
    with torch.no_grad():
        for p in model.lora_parameters():
            p.normal_()
    loaded = SpectralFM.load(model.save(tmp_path / "lora.safetensors"))
    assert loaded.lora == {"rank": 4, "alpha": 16.0}
    torch.testing.assert_close(loaded.features(x, WL, domain), model.features(x, WL, domain), rtol=0, atol=0)

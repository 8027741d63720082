"""The guided SpectralGPT (mmtok_plugin_hsi.model): shapes of every part, masking, the MAE and
contrastive losses, missing auxiliaries, HSI-only inference and persistence. Tiny seeded
configs; evidence on real data lives with the experiments."""

import pytest
import torch

from mmtok import MmtokError
from mmtok_plugin_hsi.model import (AuxInput, CrossAttentionBlock, GuidedSpectralEncoder, GuidedSpectralGPT,
                                    GuidedSpectralGPTConfig, MAEDecoder, ModalityConditioner,
                                    SpatialSpectralPatchEmbed, SpatialSpectralPositionalEncoding,
                                    SpectralAttentionBlock, info_nce, masked_mse, patchify, random_masking,
                                    unpatchify)
from mmtok_plugin_hsi.model.layers import SelfAttention

AUX = {"infrared_image": 1, "thickness_map": 3}
TINY = dict(bands=24, size=6, spectral_patch=6, spatial_patch=3, dim=32, depth=2, heads=2, decoder_dim=16,
            decoder_depth=1, decoder_heads=2, mask_ratio=0.75, aux_patch=3, conditioner_dim=16,
            conditioner_depth=1, conditioning_tokens=2, embed_dim=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine oversubscribed threads cost
    seconds per test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**over) -> GuidedSpectralGPTConfig:
    return GuidedSpectralGPTConfig(**{**TINY, "auxiliaries": AUX, **over})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cube(b: int = 6, cfg: GuidedSpectralGPTConfig | None = None, seed: int = 1) -> torch.Tensor:
    cfg = cfg or tiny()
    return torch.rand(b, cfg.bands, cfg.size, cfg.size, generator=gen(seed))


def aux_batch(b: int, present: dict[str, list[bool]], cfg: GuidedSpectralGPTConfig | None = None,
              seed: int = 2) -> dict[str, AuxInput]:
    cfg, g = cfg or tiny(), gen(seed)
    return {name: AuxInput(torch.rand(b, cfg.auxiliaries[name], cfg.size, cfg.size, generator=g),
                           torch.tensor(present[name]))
            for name in present}


def open_gates(model: GuidedSpectralGPT, value: float = 0.5) -> None:
    """Trained-like gates, so that the cross-attention path actually changes the output."""
    with torch.no_grad():
        for block in model.encoder.cross:
            block.attn_gate.fill_(value)
            block.mlp_gate.fill_(value)


def loss_and_grads(model: GuidedSpectralGPT, x: torch.Tensor, aux) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = model(x, aux, generator=gen(3))
    out.loss.backward()
    return out.loss.detach(), {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, k
        else:
            assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------- parts
def test_patch_embedding_order_and_patchify_round_trip():
    x = cube()
    emb = SpatialSpectralPatchEmbed(24, 6, 6, 3, 32)
    assert emb.grid == (4, 2, 2) and emb.num_patches == 16 and emb.patch_dim == 54
    tokens = emb(x)
    assert tokens.shape == (6, 16, 32)
    patches = patchify(x, 6, 3)
    assert patches.shape == (6, 16, 54)
    # token k of the conv is the linear map of patch k: patchify uses the same (spectral, row, col) order
    linear = patches @ emb.proj.weight.flatten(1).T + emb.proj.bias
    torch.testing.assert_close(tokens, linear, rtol=1e-5, atol=1e-5)
    assert torch.equal(unpatchify(patches, emb.grid, 6, 3), x)
    # a patch is one spectral group of one spatial cell
    assert torch.equal(patches[:, 1 * 4 + 1 * 2 + 0], x[:, 6:12, 3:6, 0:3].reshape(6, -1))


def test_positional_encoding_separable_for_any_grid():
    for grid in [(4, 2, 2), (16, 3, 3), (8, 1, 1)]:
        pos = SpatialSpectralPositionalEncoding(grid, 32)
        n = grid[0] * grid[1] * grid[2]
        assert pos.table.shape == (n, 32) and pos.spatial_index.shape == (n,)
        assert torch.isfinite(pos.table).all()
        assert len(torch.unique(pos.table, dim=0)) == n  # every token gets its own code
        assert pos(torch.zeros(2, n, 32)).shape == (2, n, 32)
    pos = SpatialSpectralPositionalEncoding((4, 2, 2), 32)
    assert pos.spatial_index.tolist() == [0, 1, 2, 3] * 4


def test_spectral_attention_stays_within_a_spatial_position():
    torch.manual_seed(0)
    block = SpectralAttentionBlock(32, 2)
    pos = SpatialSpectralPositionalEncoding((4, 2, 2), 32)
    x = torch.randn(2, 16, 32)
    spatial = pos.spatial_index.expand(2, -1)
    out = block.spectral_update(x, spatial)
    other = x.clone()
    other[:, 1] = torch.randn(2, 32)  # token 1 sits at spatial position 1
    changed = block.spectral_update(other, spatial)
    same_position = spatial[0] == 1
    assert torch.equal(changed[:, ~same_position], out[:, ~same_position])
    assert not torch.allclose(changed[:, 5], out[:, 5])  # token 5: spatial position 1, spectral group 1
    # equals attention over the spectral groups of each position computed on the reshaped grid
    grid = block.norm_spectral(x).view(2, 4, 4, 32).transpose(1, 2).reshape(8, 4, 32)
    ref = x + block.spectral(grid).view(2, 4, 4, 32).transpose(1, 2).reshape(2, 16, 32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # any visible subset works; the full block keeps shapes; plain ViT block needs no positions
    keep = torch.tensor([[0, 4, 7, 9, 13], [15, 2, 6, 10, 1]])
    sub = x.gather(1, keep[..., None].expand(-1, -1, 32))
    assert block(sub, spatial.gather(1, keep)).shape == (2, 5, 32)
    assert SpectralAttentionBlock(32, 2, spectral_attention=False)(x).shape == (2, 16, 32)


def test_cross_attention_gate_and_missing_context():
    torch.manual_seed(0)
    block = CrossAttentionBlock(32, 2)
    x, ctx = torch.randn(3, 5, 32), torch.randn(3, 4, 32)
    valid = torch.tensor([[True, True, False, False], [False] * 4, [True] * 4])
    assert torch.equal(block(x, ctx, valid), x)  # gates start at 0: identity
    with torch.no_grad():
        block.attn_gate.fill_(1.0)
        block.mlp_gate.fill_(1.0)
    ctx.requires_grad_(True)
    out = block(x, ctx, valid)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], x[1])  # no present token: exactly no update
    assert not torch.allclose(out[0], x[0])
    out.sum().backward()
    assert torch.equal(ctx.grad[1], torch.zeros(4, 32)) and torch.equal(ctx.grad[0, 2:], torch.zeros(2, 32))
    # a masked context token has no influence
    ctx2 = ctx.detach().clone()
    ctx2[0, 2:] = 100.0
    assert torch.equal(block(x, ctx2, valid)[0], out[0].detach())


def test_conditioner_shapes_and_one_pixel_images():
    torch.manual_seed(0)
    cond = ModalityConditioner(3, 6, patch=3, dim=16, depth=1, num_heads=2, num_tokens=2, out_dim=32, embed_dim=8)
    out = cond(torch.rand(4, 3, 6, 6))
    assert out.tokens.shape == (4, 2, 32) and out.embedding.shape == (4, 8)
    one = ModalityConditioner(21, 1, patch=3, dim=16, depth=1, num_heads=2, num_tokens=3, out_dim=32, embed_dim=8)
    assert one.patch == 1
    out = one(torch.rand(4, 21, 1, 1))
    assert out.tokens.shape == (4, 3, 32) and not torch.allclose(out.tokens[:, 0], out.tokens[:, 1])
    with pytest.raises(MmtokError, match=r"expected \(batch, 3, 6, 6\)"):
        cond(torch.rand(4, 1, 6, 6))
    with pytest.raises(MmtokError, match="aux_patch"):
        ModalityConditioner(1, 7, patch=3)


def test_encoder_and_decoder_shapes():
    torch.manual_seed(0)
    enc = GuidedSpectralEncoder(24, 6, 6, 3, 32, depth=3, heads=2, cross_attention_every=2)
    assert len(enc.cross) == 1 and enc.cross_after == {1: 0}
    out = enc(cube(), torch.randn(6, 4, 32), torch.ones(6, 4, dtype=torch.bool), mask_ratio=0.75, generator=gen())
    assert out.tokens.shape == (6, 4, 32) and out.mask.shape == (6, 16) and out.ids_restore.shape == (6, 16)
    full = enc(cube())
    assert full.tokens.shape == (6, 16, 32) and not full.mask.any()
    assert len(GuidedSpectralEncoder(24, 6, 6, 3, 32, depth=3, heads=2).cross) == 0  # unguided
    dec = MAEDecoder((4, 2, 2), 32, 54, decoder_dim=16, depth=1, heads=2)
    assert dec(out.tokens, out.ids_restore).shape == (6, 16, 54)


# ---------------------------------------------------------------------------- masking and losses
def test_masking_keeps_the_fraction_and_is_deterministic():
    plan = random_masking(5, 144, 0.9, generator=gen(0))
    assert plan.ids_keep.shape == (5, 14) and plan.mask.sum(1).tolist() == [130] * 5
    kept = torch.zeros(5, 144, dtype=torch.bool).scatter(1, plan.ids_keep, True)
    assert torch.equal(kept, ~plan.mask)
    assert torch.equal(torch.arange(144).expand(5, -1).gather(1, plan.ids_restore.argsort(1)),
                       plan.ids_restore.argsort(1))  # ids_restore is a permutation
    again = random_masking(5, 144, 0.9, generator=gen(0))
    assert all(torch.equal(a, b) for a, b in zip(plan, again))
    assert not torch.equal(plan.mask, random_masking(5, 144, 0.9, generator=gen(1)).mask)
    assert len(set(map(tuple, plan.mask.tolist()))) > 1  # per-sample masks
    assert random_masking(2, 8, 0.99).ids_keep.shape == (2, 1)  # at least one kept
    with pytest.raises(MmtokError, match="mask_ratio"):
        random_masking(2, 8, 1.0)


def test_mae_loss_ignores_visible_tokens():
    model = GuidedSpectralGPT(tiny(auxiliaries={}))
    out = model(cube(), generator=gen())
    assert out.mask.float().mean().item() == 0.75 and out.pred.shape == out.target.shape == (6, 16, 54)
    pred = out.pred.detach().clone()
    pred[~out.mask] = 123.0
    torch.testing.assert_close(masked_mse(pred, out.target, out.mask), out.mae_loss.detach())
    pred[out.mask] = out.target[out.mask]
    assert masked_mse(pred, out.target, out.mask) == 0 < out.mae_loss
    # norm_pix_loss: per-patch standardised target, also of one-value patches (no NaN)
    t = torch.rand(2, 3, 5)
    z = masked_mse(torch.zeros(2, 3, 5), t, torch.ones(2, 3, dtype=torch.bool), norm_pix_loss=True)
    torch.testing.assert_close(z, torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    assert torch.isfinite(masked_mse(torch.zeros(2, 3, 1), t[..., :1], torch.ones(2, 3, dtype=torch.bool), True))


def test_info_nce_prefers_aligned_pairs():
    a = torch.randn(8, 16, generator=gen(0))
    noise = torch.randn(8, 16, generator=gen(1))
    aligned, shuffled = info_nce(a, a + 0.01 * noise), info_nce(a, a[torch.arange(8).roll(1)])
    assert aligned < 0.1 < shuffled
    torch.testing.assert_close(info_nce(a, noise), info_nce(noise, a))  # symmetric


# ---------------------------------------------------------------------------- missing auxiliaries
def test_scrambling_an_absent_auxiliary_changes_neither_loss_nor_gradients():
    model = GuidedSpectralGPT(tiny())
    open_gates(model)
    x = cube()
    present = {"infrared_image": [True, False, True, True, False, True],
               "thickness_map": [False, True, True, False, True, True]}
    aux = aux_batch(6, present)
    loss, grads = loss_and_grads(model, x, aux)
    scrambled = {}
    for name, item in aux.items():
        pixels = item.pixels.clone()
        pixels[~item.present] = torch.randn_like(pixels[~item.present]) * 1e3
        scrambled[name] = AuxInput(pixels, item.present)
    loss2, grads2 = loss_and_grads(model, x, scrambled)
    assert torch.equal(loss, loss2)
    assert_same_grads(grads, grads2)
    # while a present auxiliary does matter (the guidance path is live)
    pixels = aux["infrared_image"].pixels.clone()
    pixels[0] = 0.0
    loss3, _ = loss_and_grads(model, x, {**aux, "infrared_image": AuxInput(pixels, aux["infrared_image"].present)})
    assert not torch.equal(loss, loss3)


def test_dropping_an_auxiliary_equals_marking_it_absent():
    model = GuidedSpectralGPT(tiny())
    open_gates(model)
    x = cube()
    aux = aux_batch(6, {"infrared_image": [True] * 6, "thickness_map": [False] * 6})
    loss, grads = loss_and_grads(model, x, aux)
    loss2, grads2 = loss_and_grads(model, x, {"infrared_image": aux["infrared_image"]})
    assert torch.equal(loss, loss2)
    assert_same_grads(grads, grads2)
    assert all(g is None for k, g in grads.items() if k.startswith("conditioners.thickness_map."))
    # no auxiliary at all = every auxiliary absent
    none = aux_batch(6, {"infrared_image": [False] * 6, "thickness_map": [False] * 6})
    loss3, grads3 = loss_and_grads(model, x, none)
    loss4, grads4 = loss_and_grads(model, x, None)
    assert torch.equal(loss3, loss4)
    assert_same_grads(grads3, grads4)


def test_contrastive_terms_with_present_auxiliaries():
    model = GuidedSpectralGPT(tiny())
    x = cube()
    aux = aux_batch(6, {"infrared_image": [True] * 6, "thickness_map": [True, False, False, False, False, False]})
    model.zero_grad()
    out = model(x, aux, generator=gen())
    assert set(out.contrastive) == {"infrared_image"}  # thickness_map: a single present sample, skipped
    assert all(torch.isfinite(v) for v in out.contrastive.values())
    torch.testing.assert_close(out.loss, out.mae_loss + 0.1 * out.contrastive["infrared_image"])
    out.loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert grads["conditioners.infrared_image.head.proj.weight"].abs().sum() > 0
    assert grads["conditioners.infrared_image.proj.weight"].abs().sum() > 0  # reaches the ViT's first layer
    assert grads["hsi_head.proj.weight"].abs().sum() > 0
    assert grads["encoder.cross.0.attn_gate"].abs() > 0  # the gates can open
    both = aux_batch(6, {"infrared_image": [True] * 6, "thickness_map": [True, True, False, True, False, False]})
    out = model(x, both, generator=gen())
    assert set(out.contrastive) == {"infrared_image", "thickness_map"}
    torch.testing.assert_close(out.loss, out.mae_loss + 0.1 * (out.contrastive["infrared_image"]
                                                               + out.contrastive["thickness_map"]) / 2)
    hsi_side = GuidedSpectralGPT(tiny(contrastive_latent="hsi"))
    assert torch.isfinite(hsi_side(x, both, generator=gen()).loss)


def test_zero_gates_make_the_guided_encoder_start_as_the_hsi_only_one():
    model = GuidedSpectralGPT(tiny())
    x = cube()
    aux = aux_batch(6, {"infrared_image": [True] * 6, "thickness_map": [True, False] * 3})
    cond = model.condition(aux, 6, x.device)
    guided = model.encoder(x, cond.tokens, cond.valid, 0.75, gen())
    alone = model.encoder(x, None, None, 0.75, gen())
    assert torch.equal(guided.tokens, alone.tokens)
    assert torch.equal(model.encoder(x, cond.tokens, cond.valid).tokens.mean(1), model.embed(x))


def test_embed_depends_only_on_the_cube():
    model = GuidedSpectralGPT(tiny())
    open_gates(model)
    x = cube()
    e = model.embed(x)
    assert e.shape == (6, 32) and not e.requires_grad
    torch.testing.assert_close(e, model.tokens(x).mean(1))
    model.train()
    model(x, aux_batch(6, {"infrared_image": [True] * 6, "thickness_map": [True] * 6}), generator=gen())
    assert torch.equal(model.embed(x), e)  # deterministic, no mask, no auxiliary, train or eval
    model.eval()
    assert torch.equal(model.embed(x), e)
    torch.testing.assert_close(model.embed(x[:2]), e[:2])  # per sample: no batch statistics


# ---------------------------------------------------------------------------- whole model
def test_unguided_model_has_no_guidance_parts():
    model = GuidedSpectralGPT(tiny(auxiliaries={}))
    names = [k for k, _ in model.named_parameters()]
    assert not any(k.startswith(("conditioners.", "encoder.cross.", "hsi_head.")) for k in names)
    guided = GuidedSpectralGPT(tiny())
    same = [k for k, _ in guided.named_parameters() if k.startswith(("encoder.blocks.", "encoder.patch_embed."))]
    assert same == [k for k in names if k.startswith(("encoder.blocks.", "encoder.patch_embed."))]
    out = model(cube(), generator=gen())
    assert out.contrastive == {} and torch.equal(out.loss, out.mae_loss)
    with pytest.raises(MmtokError, match="not an auxiliary of this model"):
        model(cube(), aux_batch(6, {"infrared_image": [True] * 6}, tiny()))


def test_reconstruct_keeps_visible_patches():
    model = GuidedSpectralGPT(tiny())
    x = cube()
    rec, mask = model.reconstruct(x, generator=gen())
    assert rec.shape == x.shape and mask.shape == (6, 16) and mask.float().mean() == 0.75
    visible = ~mask[..., None].expand(-1, -1, 54)
    assert torch.equal(patchify(rec, 6, 3)[visible], patchify(x, 6, 3)[visible])
    assert not torch.equal(rec, x)
    norm = GuidedSpectralGPT(tiny(norm_pix_loss=True))
    out = norm(x, generator=gen())
    torch.testing.assert_close(out.target.mean(-1), torch.zeros(6, 16), atol=1e-4, rtol=0)
    assert norm.reconstruct(x, mask_ratio=0.5, generator=gen())[1].float().mean() == 0.5


def test_save_load_round_trip(tmp_path):
    model = GuidedSpectralGPT(tiny())
    open_gates(model, 0.3)
    x = cube()
    aux = aux_batch(6, {"infrared_image": [True] * 6, "thickness_map": [True, False] * 3})
    assert model.save(tmp_path / "run") == tmp_path / "run"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    loaded = GuidedSpectralGPT.load(tmp_path / "run")
    assert loaded.config == model.config
    model.eval()
    a, b = model(x, aux, generator=gen()), loaded(x, aux, generator=gen())
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred)
    assert torch.equal(model.embed(x), loaded.embed(x))
    other = GuidedSpectralGPT(tiny(dim=16))
    other.save(tmp_path / "small")
    (tmp_path / "run" / "model.safetensors").replace(tmp_path / "small" / "model.safetensors")
    with pytest.raises(MmtokError, match="does not fit the model"):
        GuidedSpectralGPT.load(tmp_path / "small")


def test_per_pixel_spectra():
    cfg = GuidedSpectralGPTConfig(bands=24, size=1, spectral_patch=6, spatial_patch=1, dim=32, depth=2, heads=2,
                                  decoder_dim=16, decoder_depth=1, decoder_heads=2, mask_ratio=0.5,
                                  auxiliaries={"elevation_map": 21}, conditioner_dim=16, conditioner_depth=1,
                                  conditioning_tokens=2, embed_dim=8)
    model = GuidedSpectralGPT(cfg)
    assert model.num_patches == 4 and model.patch_dim == 6
    x = torch.rand(5, 24, 1, 1, generator=gen())
    aux = {"elevation_map": AuxInput(torch.rand(5, 21, 1, 1, generator=gen(1)),
                                     torch.tensor([True, True, False, True, False]))}
    out = model(x, aux, generator=gen())
    assert out.pred.shape == (5, 4, 6) and set(out.contrastive) == {"elevation_map"}
    out.loss.backward()
    assert model.embed(x).shape == (5, 32) and model.reconstruct(x)[0].shape == x.shape


def test_bad_inputs_are_one_line_errors():
    model = GuidedSpectralGPT(tiny())
    x = cube()
    aux = aux_batch(6, {"infrared_image": [True] * 6})
    cases = [
        (lambda: model(torch.rand(6, 20, 6, 6)), r"cube: expected \(batch, 24, 6, 6\)"),
        (lambda: model.embed(torch.rand(6, 24, 5, 5)), r"found \(6, 24, 5, 5\)"),
        (lambda: model(torch.rand(24, 6, 6)), "cube: expected"),
        (lambda: model(x, {"elevation_map": aux["infrared_image"]}), "'elevation_map' is not an auxiliary"),
        (lambda: model(x, {"infrared_image": AuxInput(torch.rand(6, 3, 6, 6), torch.ones(6, dtype=torch.bool))}),
         r"aux\['infrared_image'\].pixels: expected \(6, 1, 6, 6\)"),
        (lambda: model(x, {"infrared_image": AuxInput(torch.rand(6, 1, 3, 3), torch.ones(6, dtype=torch.bool))}),
         "on the cube's grid"),
        (lambda: model(x, {"infrared_image": AuxInput(aux["infrared_image"].pixels, torch.ones(6))}),
         r"present: expected \(6,\) bool"),
        (lambda: model(x, {"infrared_image": aux["infrared_image"].pixels}), "expected AuxInput"),
    ]
    for call, message in cases:
        with pytest.raises(MmtokError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="spectral_patch"):
        tiny(bands=25)
    with pytest.raises(ValueError, match="extra"):
        GuidedSpectralGPTConfig(unknown=1)
    with pytest.raises(MmtokError, match="heads"):
        SelfAttention(30, 4)

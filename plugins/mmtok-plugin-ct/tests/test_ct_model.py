"""The CT encoder's layers, losses, aligner and shared-transformer head (tiny sizes, CPU)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from mmtok_plugin_ct.model.encoder import (
    CTEncoderConfig,
    CTReportAligner,
    CTVisionEncoder,
    ReportTextEncoder,
)
from mmtok_plugin_ct.model.head import CTAlignmentHead
from mmtok_plugin_ct.model.layers import (
    AnatomicalStructureEncoder,
    RegionAwareAttention,
    SliceAwareAttention,
    ThreeDPatchEmbedding,
)
from mmtok_plugin_ct.model.losses import CrossModalContrastiveLoss, MultiLevelAlignmentLoss

from mmtok.model import (
    MaskingConfig,
    MaskSampler,
    ModelConfig,
    MultimodalMaskedTransformer,
    StreamSpec,
)
from mmtok.model.transformer import Features
from mmtok.testing import torch_threads
from mmtok.tokens import TokenBatch, TokenStream


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for these tiny tensors (more only add synchronisation), restored afterwards."""
    with torch_threads(1):
        yield


IMG, PATCH = (8, 32, 32), (4, 16, 16)  # 2 x 2 x 2 patches
TINY = {"img_size": IMG, "patch_size": PATCH, "embed_dim": 32, "depth": 2, "num_heads": 4, "num_regions": 4,
        "mask_hidden": 8, "max_slice_distance": 4, "shared_dim": 16, "vocab_size": 40, "text_max_tokens": 12,
        "text_depth": 1}


# ---------------------------------------------------------------------------- attention
def _naive_slice_attention(attn: SliceAwareAttention, x, z):
    """The seed's explicit formula (slice_distance_weight folded into the table)."""
    b, n, c = x.shape
    h, hd = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) * hd**-0.5
    dist = torch.clamp((z[:, None] - z[None, :]).abs(), max=attn.max_slice_distance - 1).long()
    logits = logits + attn.slice_bias[:, dist]
    return attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("mode", ["augment", "mask"])
def test_slice_aware_attention_matches_the_explicit_formula(mode):
    attn = SliceAwareAttention(16, 4, max_slice_distance=3, mode=mode)
    x = torch.randn(2, 12, 16)
    z = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])  # distances up to 5: clamped at 2
    with torch.no_grad():
        attn.slice_bias.normal_(0, 1.0)
        out = attn(x, z)
        torch.testing.assert_close(out, _naive_slice_attention(attn, x, z), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn(x, z + 7), out, atol=1e-5, rtol=1e-5)  # only distances matter
        torch.testing.assert_close(attn(x, z, num_slices=6), out, atol=1e-5, rtol=1e-5)
        explicit, weights = attn(x, z, return_attention=True)
        torch.testing.assert_close(explicit, out, atol=1e-5, rtol=1e-5)
        assert weights.shape == (2, 4, 12, 12)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 12))
        # zero bias: plain SDPA self-attention; a non-zero bias changes the output
        attn.slice_bias.zero_()
        q, k, v = attn.qkv(x).view(2, 12, 3, 4, 4).permute(2, 0, 3, 1, 4)
        plain = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 12, 16))
        torch.testing.assert_close(attn(x, z), plain, atol=1e-5, rtol=1e-5)
        attn.slice_bias[:, 1:] = -5.0  # only the same slice
        assert (attn(x, z) - plain).abs().max() > 1e-2
    with pytest.raises(ValueError, match=r"expected the \(12,\) slice index"):
        attn(x, z[:5])


def test_slice_aware_gradients_agree_between_the_kernels():
    torch.manual_seed(3)
    x = torch.randn(2, 32, 16)
    z = torch.arange(4).repeat_interleave(8)
    grads = []
    for mode in ("augment", "mask", "explicit"):
        torch.manual_seed(0)
        attn = SliceAwareAttention(16, 2, max_slice_distance=3, mode="mask" if mode == "explicit" else mode)
        with torch.no_grad():
            attn.slice_bias.normal_(0, 1.0)
        out = attn(x, z, return_attention=True)[0] if mode == "explicit" else attn(x, z, num_slices=4)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        grads.append((attn.slice_bias.grad, attn.qkv.weight.grad))
    for other in grads[1:]:
        for g, h in zip(grads[0], other):
            torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-4)
    assert grads[0][0][:, :3].abs().min() > 0


def _constructed_mask() -> torch.Tensor:
    m = torch.zeros(1, 1, *IMG, dtype=torch.long)
    m[0, 0, 0:4, 0:8, 0:16] = 1  # half of patch (0, 0, 0)
    m[0, 0, 2:6, 16:32, 16:32] = 2  # half of patch (0, 1, 1), half of (1, 1, 1)
    m[0, 0, 7, 0:4, 28:32] = 2  # 16 voxels of patch (1, 0, 1)
    return m  # region 3 absent


def _hand_overlap(m: torch.Tensor, r: int) -> torch.Tensor:
    rows = []
    for pz, py, px in itertools.product(range(2), range(2), range(2)):
        block = m[0, 0, pz * 4:(pz + 1) * 4, py * 16:(py + 1) * 16, px * 16:(px + 1) * 16]
        rows.append([(block == k).sum().item() / block.numel() for k in range(r)])
    return torch.tensor(rows)


def test_patch_to_region_is_the_exact_voxel_overlap():
    enc = AnatomicalStructureEncoder(num_regions=4, embed_dim=32, patch_size=PATCH, hidden=8)
    m = _constructed_mask()
    out = enc(m)
    assert out.region_embeds.shape == (1, 4, 32) and out.patch_to_region.shape == (1, 8, 4)
    torch.testing.assert_close(out.patch_to_region[0], _hand_overlap(m, 4))
    torch.testing.assert_close(out.patch_to_region.sum(-1), torch.ones(1, 8))
    assert out.patch_to_region[0, 0, 1] == 0.5 and out.patch_to_region[0, 3, 2] == 0.5
    assert out.region_present.tolist() == [[True, True, True, False]]
    # every voxel background: background still present, the others absent
    assert enc(torch.zeros_like(m)).region_present.tolist() == [[True, False, False, False]]
    # a weighted sum: the plain sum of a LayerNorm output is constant (its gradient is only roundoff)
    (out.region_embeds * torch.linspace(-1, 1, 32)).sum().backward()
    assert enc.mask_encoder[0].weight.grad.abs().sum() > 1e-2 and enc.region_table.weight.grad.abs().sum() > 1e-2


def test_region_attention_ignores_absent_regions():
    enc = AnatomicalStructureEncoder(num_regions=4, embed_dim=32, patch_size=PATCH, hidden=8)
    anatomy = enc(_constructed_mask().repeat(2, 1, 1, 1, 1))
    attn = RegionAwareAttention(32, 4)
    x = torch.randn(2, 8, 32)
    out, w = attn(x, anatomy.region_embeds, anatomy.patch_to_region, anatomy.region_present, return_attention=True)
    assert w.shape == (2, 4, 8, 4) and torch.isfinite(w).all()
    assert (w[..., 3] == 0).all()  # region 3 absent
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 8))
    # patch 1 (0, 0, 1) is all background: the other present regions only get the eps prior
    assert (w[:, :, 1, 0] > 0.99).all()
    torch.testing.assert_close(attn(x, anatomy.region_embeds, anatomy.patch_to_region, anatomy.region_present), out,
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- embedding / errors
def test_patch_embedding_order_and_errors():
    emb = ThreeDPatchEmbedding(1, 16, PATCH, IMG)
    assert emb.patch_coords.tolist() == [list(map(float, c)) for c in itertools.product(range(2), repeat=3)]
    x = torch.zeros(1, 1, *IMG)
    x[0, 0, 4:8, 0:16, 16:32] = 1.0  # patch (1, 0, 1)
    with torch.no_grad():
        diff = (emb(x) - emb(torch.zeros_like(x))).abs().sum(-1)[0]
    assert diff.nonzero().flatten().tolist() == [emb.patch_coords.tolist().index([1.0, 0.0, 1.0])]
    with pytest.raises(ValueError, match=r"expected \(batch, 1, 8, 32, 32\).*found \(1, 1, 8, 32, 16\)"):
        emb(torch.zeros(1, 1, 8, 32, 16))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        ThreeDPatchEmbedding(1, 16, PATCH, (8, 30, 32))


def test_clear_errors_on_bad_inputs():
    enc = CTVisionEncoder(CTEncoderConfig(**TINY))
    vol, reg = torch.zeros(1, 1, *IMG), torch.zeros(1, 1, *IMG, dtype=torch.long)
    with pytest.raises(ValueError, match=r"volume: expected \(batch, 1, 8, 32, 32\)"):
        enc(torch.zeros(1, 1, 8, 16, 32), reg)
    with pytest.raises(ValueError, match=r"regions: expected \(1, 1, 8, 32, 32\)"):
        enc(vol, reg[..., :16])
    with pytest.raises(ValueError, match=r"ids must be in \[0, 4\), found ids in \[0, 7\]"):
        enc(vol, reg + 7 * (torch.arange(32) == 3))
    with pytest.raises(ValueError, match=r"found ids in \[-1, 0\]"):
        enc(vol, reg - (torch.arange(32) == 3).long())
    with pytest.raises(ValueError, match="integer region ids"):
        enc(vol, reg.float())
    with pytest.raises(ValueError, match="aggregate_layers"):
        CTEncoderConfig(**{**TINY, "aggregate_layers": [5]})
    with pytest.raises(ValueError):
        CTEncoderConfig(**{**TINY, "nope": 1})
    text = ReportTextEncoder(10, 6, 16, 1, 2)
    with pytest.raises(ValueError, match=r"text ids must be in \[0, 10\), found ids in \[1, 12\]"):
        text(torch.tensor([[1, 12]]), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="at most 6 tokens"):
        text(torch.ones(1, 7, dtype=torch.long), torch.zeros(1, 7, dtype=torch.long))


def test_text_encoder_steps_and_impression_fallback():
    text = ReportTextEncoder(20, 8, 16, 1, 2).eval()
    ids = torch.tensor([[3, 4, 0, 5, 6, 0, 0, 0], [7, 8, 9, 0, 0, 0, 0, 0]])
    steps = torch.tensor([[0, 0, -1, 1, 1, -1, -1, -1], [2, 2, 2, -1, -1, -1, -1, -1]])  # sample 1: no step 0
    out = text(ids, steps)
    assert out.step_features.shape == (2, 3, 16)
    assert out.step_valid.tolist() == [[True, True, False], [False, False, True]]
    torch.testing.assert_close(out.text_global[0], out.token_features[0, :2].mean(0))
    torch.testing.assert_close(out.text_global[1], out.token_features[1, :3].mean(0))
    torch.testing.assert_close(out.step_features[0, 1], out.token_features[0, 3:5].mean(0))


# ---------------------------------------------------------------------------- losses
def test_info_nce_equals_a_hand_computation():
    torch.manual_seed(1)
    a, b = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    loss = CrossModalContrastiveLoss(init_temperature=0.5, learnable=False)
    lg = [[float(a[i] @ b[j]) / 0.5 for j in range(3)] for i in range(3)]

    def nll(rows, pos):  # rows[i][j]; pos(i) -> the positive columns of row i
        return sum(-math.log(sum(math.exp(r[j]) for j in pos(i)) / sum(math.exp(v) for v in r))
                   for i, r in enumerate(rows)) / len(rows)

    cols = [list(c) for c in zip(*lg)]
    expected = (nll(lg, lambda i: [i]) + nll(cols, lambda i: [i])) / 2
    assert abs(loss(a, b).item() - expected) < 1e-5
    assert abs(loss(a, b, torch.arange(3)).item() - expected) < 1e-5
    groups = torch.tensor([0, 0, 1])  # samples 0 and 1 share a caption
    def same(i):
        return [0, 1] if i < 2 else [2]

    expected = (nll(lg, same) + nll(cols, same)) / 2
    assert abs(loss(a, b, groups).item() - expected) < 1e-5
    # duplicates are no longer negatives: two identical pairs give the loss of a 2-sample batch
    a2, b2 = torch.cat([a[:1], a]), torch.cat([b[:1], b])
    assert abs(loss(a2, b2, torch.tensor([0, 0, 1, 2])).item() - loss(a, b).item()) > 1e-3
    assert loss(a2, b2, torch.tensor([0, 0, 1, 2])).item() < loss(a2, b2).item()


def test_multi_level_loss_skips_empty_levels_with_a_graph():
    lf = MultiLevelAlignmentLoss(top_k=2)
    g = torch.randn(3, 8, requires_grad=True)
    reg, patch, steps = (torch.randn(3, 4, 8, requires_grad=True), torch.randn(3, 5, 8, requires_grad=True),
                         torch.randn(3, 2, 8, requires_grad=True))
    present = torch.tensor([[True, True, False, False]] * 3)
    out = lf(g, g, reg, present, patch, steps, torch.zeros(3, 2, dtype=torch.bool), torch.full((3, 2), 1))
    assert out.parts["region"].item() == 0 and out.parts["step"].item() == 0
    out.loss.backward()
    assert patch.grad is not None and reg.grad is not None
    # a step that mentions an absent region is not a region item; valid steps are step items
    out = lf(g, g, reg, present, patch, steps, torch.ones(3, 2, dtype=torch.bool),
             torch.tensor([[1, 2], [-1, -1], [0, 3]]))
    assert out.parts["region"].item() > 0 and out.parts["step"].item() > 0


# ---------------------------------------------------------------------------- aligner
def _synthetic_batch(b: int = 6):
    """Box regions at sample-specific places; the report names the regions present and their
    slab: a deterministic function of the region map."""
    g = torch.Generator().manual_seed(0)
    regions = torch.zeros(b, 1, *IMG, dtype=torch.long)
    ids = torch.zeros(b, 12, dtype=torch.long)
    steps = torch.full((b, 12), -1)
    step_region = torch.full((b, 3), -1)
    for i in range(b):
        toks, st, slabs = [], [], []
        for s, r in enumerate((1 + i % 3, 1 + (i + 1) % 3), start=1):
            z0 = int(torch.randint(0, 2, (), generator=g)) * 4
            y0, x0 = (int(v) * 8 for v in torch.randint(0, 3, (2,), generator=g))
            regions[i, 0, z0:z0 + 4, y0:y0 + 12, x0:x0 + 12] = r
            toks += [10 + r, 20 + z0 // 4 * 3 + y0 // 8, 30 + x0 // 8]
            st += [s] * 3
            step_region[i, s] = r
            slabs.append(z0 // 4)
        toks, st = [1 + i % 3, 4 + slabs[0]] + toks, [0, 0] + st  # impression: which pair, which slab
        ids[i, :len(toks)], steps[i, :len(st)] = torch.tensor(toks), torch.tensor(st)
    volume = regions.float() / 3 + 0.05 * torch.randn(regions.shape, generator=g)
    return volume, regions, ids, steps, step_region


def test_aligner_trains_on_a_tiny_synthetic_batch():
    torch.manual_seed(0)
    # CLIP's 0.07 and FILIP's top-k mean are the defaults; 6 near-identical synthetic volumes
    # leave the features of a fresh model too alike for them to separate in 30 steps
    model = CTReportAligner(CTEncoderConfig(**{**TINY, "temperature": 0.2, "filip_top_k": 1}))
    batch = _synthetic_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        out = model(*batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert set(out.parts) >= {"global", "region", "step"} and all(torch.isfinite(v) for v in out.parts.values())
    assert out.parts["region"] > 0  # every step names a present region
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5]), losses
    model.eval()
    with torch.no_grad():
        v, t = model.embed_volumes(*batch[:2]), model.embed_texts(*batch[2:4])
        vis = model.vision(*batch[:2])
    assert v.shape == t.shape == (6, 16)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(6))
    assert vis.patch_features.shape == (6, 8, 32) and vis.region_features.shape == (6, 4, 32)
    assert vis.global_features.shape == (6, 32) and vis.patch_to_region.shape == (6, 8, 4)
    assert vis.region_present[:, 3].any() and not vis.region_present.all()


# ---------------------------------------------------------------------------- shared-transformer head
STREAMS = {"tok_ct_volume": StreamSpec(vocab_size=16, grid=(2, 2, 2)),
           "tok_anatomy_mask": StreamSpec(vocab_size=8, grid=(4,)),
           "tok_labs": StreamSpec(vocab_size=5, grid=(3,)),
           "tok_report": StreamSpec(vocab_size=20, grid=(6,))}


def test_alignment_head_on_the_shared_transformer():
    torch.manual_seed(0)
    b = 6
    model = MultimodalMaskedTransformer(STREAMS, ModelConfig(d_model=32, num_heads=4, encoder_depth=1,
                                                            decoder_depth=1))
    present = {k: torch.ones(b, dtype=torch.bool) for k in STREAMS}
    present["tok_report"][0] = False
    batch = TokenBatch({k: TokenStream(grid=s.grid, ids=torch.randint(0, s.vocab_size, (b, s.num_tokens)),
                                       vocab_size=s.vocab_size, present=present[k]) for k, s in STREAMS.items()})
    sampler = MaskSampler(model.layout, MaskingConfig(input_budget=10, target_budget=6))
    masks = sampler(model.presence(batch), sampler.draw(b, 0))
    head = CTAlignmentHead(d_model=32, streams=model.streams, shared_dim=8)
    out = model(batch, masks)
    loss = head.loss(out.features, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    (out.loss + loss).backward()
    assert head.image_proj.weight.grad.abs().sum() > 0 and head.text_pool.query.grad.abs().sum() > 0
    assert model.encoder[0].attn.q.weight.grad.abs().sum() > 0
    assert {"pairs", "image_to_text_top1", "temperature"} <= set(head.metrics())
    # the slots decide the side: tokens at the report's slots are text, at the volume's image
    assert head.side_of_slot.tolist() == [1] * 12 + [0] * 3 + [2] * 6


def test_alignment_head_needs_two_pairs_and_both_sides():
    head = CTAlignmentHead(d_model=16, streams=STREAMS, shared_dim=8)
    tokens = torch.randn(3, 4, 16, requires_grad=True)
    slots = torch.tensor([[0, 1, 15, 16], [2, 3, 4, 5], [8, 12, 13, 14]])  # only sample 0 has both sides
    loss = head.loss(Features(tokens, torch.ones(3, 4, dtype=torch.bool), tokens.mean(1), slots), {})
    assert loss.item() == 0
    loss.backward()
    assert tokens.grad is not None
    with pytest.raises(Exception, match="needs an image stream"):
        CTAlignmentHead(d_model=16, streams={"tok_labs": STREAMS["tok_labs"]})

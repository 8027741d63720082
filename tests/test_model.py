"""The shared masked transformer: masking invariants, absent streams, precision, inference."""

import dataclasses

import torch
from torch import nn

from mmtok import TokenBatch, TokenStream
from mmtok.model import MaskingConfig, MaskSampler, ModelConfig, MultimodalMaskedTransformer, StreamSpec
from mmtok.model.layers import grid_sincos

STREAMS = {"img": StreamSpec(vocab_size=50, grid=(3, 4)), "tab": StreamSpec(vocab_size=8, grid=(2,)),
           "vec": StreamSpec(dim=3, grid=(5,))}
SMALL = ModelConfig(d_model=32, num_heads=4, encoder_depth=2, decoder_depth=1)


def make_batch(present: torch.Tensor, seed: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    b = present.shape[0]
    return TokenBatch({
        "img": TokenStream(grid=(3, 4), ids=torch.randint(0, 50, (b, 12), generator=g), vocab_size=50,
                           present=present[:, 0]),
        "tab": TokenStream(grid=(2,), ids=torch.randint(0, 8, (b, 2), generator=g), vocab_size=8,
                           present=present[:, 1]),
        "vec": TokenStream(grid=(5,), values=torch.randn(b, 5, 3, generator=g), present=present[:, 2])})


def every_pattern() -> torch.Tensor:
    """All 7 non-empty presence patterns of 3 streams, 3 times: samples with 1, 2 or 3 streams."""
    rows = [[(i >> s) & 1 for s in range(3)] for i in range(1, 8)]
    return torch.tensor(rows * 3, dtype=torch.bool)


def test_masks_respect_presence_budgets_and_limits():
    model = MultimodalMaskedTransformer(STREAMS, SMALL)
    cfg = MaskingConfig(input_budget=6, target_budget=5, alpha=0.5,
                        streams={"img": {"max_input": 3, "max_target": 4}, "tab": {"min_target": 1}})
    sampler = MaskSampler(model.layout, cfg)
    present = every_pattern()
    for seed in range(20):
        masks = sampler(present, sampler.draw(len(present), seed))
        inputs, targets = masks.selection(model.layout.total)
        slot_present = present[:, model.layout.stream_of]
        assert not (inputs & ~slot_present).any() and not (targets & ~slot_present).any()
        assert not (inputs & targets).any()
        assert (inputs.sum(1) <= 6).all() and (targets.sum(1) <= 5).all()
        img = model.layout.slots("img")
        assert (inputs[:, img].sum(1) <= 3).all() and (targets[:, img].sum(1) <= 4).all()
        available = slot_present.sum(1)
        assert (inputs.sum(1) >= 1).all()
        assert (targets.sum(1)[available >= 2] >= 1).all()  # something to learn from every sample
        tab = model.layout.slots("tab")
        has_tab_left = present[:, 1] & (inputs[:, tab].sum(1) < 2)
        assert (targets[:, tab].sum(1)[has_tab_left] >= 1).all()  # min_target
        # the input budget is used up whenever the per-stream limits leave room for it
        room = (present.long() * torch.tensor([3, 2, 5])).sum(1)
        full = (room >= 6) & (available >= 7)
        assert full.any() and (inputs.sum(1)[full] == 6).all()
        every = present.all(1)
        assert (targets.sum(1)[every] == 5).all()


def test_masks_are_a_function_of_the_seed_and_rows_of_a_global_draw():
    model = MultimodalMaskedTransformer(STREAMS, SMALL)
    sampler = MaskSampler(model.layout, MaskingConfig(input_budget=5, target_budget=5))
    present = every_pattern()
    whole = sampler(present, sampler.draw(len(present), 7))
    half = sampler(present[1::2], sampler.draw(len(present), 7)[1::2])
    assert torch.equal(whole.input_idx[1::2], half.input_idx) and torch.equal(whole.target_idx[1::2], half.target_idx)
    other = sampler(present, sampler.draw(len(present), 8))
    assert not torch.equal(whole.input_idx, other.input_idx)


def test_absent_streams_never_reach_the_loss():
    torch.manual_seed(0)
    model = MultimodalMaskedTransformer(STREAMS, SMALL)
    sampler = MaskSampler(model.layout, MaskingConfig(input_budget=8, target_budget=8))
    present = every_pattern()
    batch = make_batch(present)
    masks = sampler(present, sampler.draw(len(present), 0))
    out = model(batch, masks)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # scramble the tokens of every absent stream: nothing may change
    scrambled = {}
    for s, key in enumerate(STREAMS):
        tokens = batch[key].tokens
        noise = torch.randint(0, 8, tokens.shape) if STREAMS[key].is_discrete else torch.randn(tokens.shape) * 100
        absent = ~present[:, s]
        mixed = torch.where(absent.view(-1, *[1] * (noise.dim() - 1)), noise, tokens)
        field = "ids" if STREAMS[key].is_discrete else "values"
        scrambled[key] = dataclasses.replace(batch[key], **{field: mixed})
    scrambled = TokenBatch(scrambled)
    model.zero_grad()
    out2 = model(scrambled, masks)
    out2.loss.backward()
    assert torch.equal(out.loss, out2.loss)
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.equal(grads[n], p.grad), n
    # a stream absent from the whole batch has no targets, no loss
    only_img = present.clone()
    only_img[:, 1:] = False
    only_img[:, 0] = True
    out3 = model(make_batch(only_img), sampler(only_img, sampler.draw(len(only_img), 1)))
    assert out3.count[1:].sum() == 0 and out3.loss_sum[1:].sum() == 0 and out3.count[0] > 0


def test_mixed_batches_train_and_fit_a_fixed_batch():
    torch.manual_seed(0)
    model = MultimodalMaskedTransformer(STREAMS, SMALL)
    sampler = MaskSampler(model.layout, MaskingConfig(input_budget=8, target_budget=8))
    present = every_pattern()
    batch = make_batch(present)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        out = model(batch, sampler(present, sampler.draw(len(present), step % 4)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert torch.isfinite(out.loss)
        losses.append(float(out.loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5, losses


def test_bf16_autocast_gives_a_finite_fp32_loss():
    model = MultimodalMaskedTransformer(STREAMS, SMALL)
    sampler = MaskSampler(model.layout, MaskingConfig(input_budget=8, target_budget=8))
    present = every_pattern()
    masks = sampler(present, sampler.draw(len(present), 0))
    seen = []
    hook = model.encoder[0].attn.q.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch(present), masks)
    hook.remove()
    assert seen == [torch.bfloat16] and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_embed_predict_and_impute():
    model = MultimodalMaskedTransformer(STREAMS, SMALL).eval()
    present = every_pattern()
    batch = make_batch(present)
    feats = model.embed(batch)
    assert feats.pooled.shape == (len(present), 32) and torch.isfinite(feats.pooled).all()
    assert torch.equal(feats.valid.sum(1), present.long() @ torch.tensor([12, 2, 5]))
    ids = model.predict(batch, "img", steps=4)
    assert ids.shape == (len(present), 12) and ids.min() >= 0 and ids.max() < 50
    values = model.predict(batch, "vec")
    assert values.shape == (len(present), 5, 3)
    filled = model.impute(batch, "tab")
    keep = present[:, 1]
    assert torch.equal(filled[keep], batch["tab"].ids[keep]) and filled.max() < 8
    # the prediction of a stream never looks at the stream itself
    other = batch.replace(img=dataclasses.replace(batch["img"], ids=torch.randint(0, 50, (len(present), 12))))
    assert torch.equal(model.predict(other, "img", steps=4), ids)


def test_positions_are_distinct_per_grid_cell():
    pos = grid_sincos((3, 4), 32)
    assert pos.shape == (12, 32) and torch.cdist(pos, pos).add(torch.eye(12)).min() > 0.1
    assert torch.equal(grid_sincos((5,), 16)[0, 8:], torch.ones(8))  # cos(0) = 1


def test_parameters_all_trained():
    """Every parameter gets a gradient from a batch that has every stream (no dead modules)."""
    model = MultimodalMaskedTransformer(STREAMS, SMALL)
    sampler = MaskSampler(model.layout, MaskingConfig(input_budget=10, target_budget=10))
    present = torch.ones(6, 3, dtype=torch.bool)
    model(make_batch(present), sampler(present, sampler.draw(6, 0))).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    assert isinstance(model.encoder[0], nn.Module)


def test_training_forward_is_one_graph_for_torch_compile():
    """fullgraph=True fails on any graph break (host syncs, Python-side tensor reads); the eager
    backend keeps the test fast while checking exactly what Dynamo captures."""
    model = MultimodalMaskedTransformer(STREAMS, SMALL)
    sampler = MaskSampler(model.layout, MaskingConfig(input_budget=8, target_budget=8))
    present = every_pattern()
    batch, masks = make_batch(present), sampler(present, sampler.draw(len(present), 0))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(batch, masks).loss, model(batch, masks).loss)


def test_loss_per_stream_vocabulary_equals_the_joint_vocabulary_path(monkeypatch):
    """Eager training scores each discrete target over its own stream's vocabulary (grouped by
    stream); torch.compile gets the static joint-vocabulary path. Same loss, per-stream sums, hits
    and gradients, with and without class weights."""
    torch.manual_seed(0)
    model = MultimodalMaskedTransformer(STREAMS, SMALL)
    sampler = MaskSampler(model.layout, MaskingConfig(input_budget=8, target_budget=8))
    present = every_pattern()
    batch, masks = make_batch(present), sampler(present, sampler.draw(len(present), 0))
    weight = torch.rand(model.layout.total_vocab, generator=torch.Generator().manual_seed(1)) + 0.5

    def run(token_weight):
        model.zero_grad()
        out = model(batch, masks, token_weight=token_weight)
        out.loss.backward()
        return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for token_weight in (None, weight):
        grouped, g_grouped = run(token_weight)
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, "is_compiling", lambda: True)
            dense, g_dense = run(token_weight)
        assert torch.allclose(grouped.loss, dense.loss, atol=1e-6)
        assert torch.allclose(grouped.loss_sum, dense.loss_sum, atol=1e-5)
        assert torch.equal(grouped.correct, dense.correct) and torch.equal(grouped.count, dense.count)
        assert grouped.count[model.layout.discrete].sum() > 0
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_grouped, g_dense))


def test_stream_logits_are_the_joint_logits_of_its_slice():
    torch.manual_seed(0)
    model = MultimodalMaskedTransformer(STREAMS, SMALL)
    h = torch.randn(2, 5, SMALL.d_model)
    for s, key in enumerate(model.layout.keys):
        if model.streams[key].is_discrete:
            idx = torch.full((2, 5), int(model.layout.start[s]))
            joint = model.logits(h, idx)[..., model._vocab_slice(s)]
            assert torch.allclose(model.stream_logits(h, s), joint, atol=1e-6)

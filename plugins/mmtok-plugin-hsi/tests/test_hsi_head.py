"""The ``hsi-guidance`` head on mmtok's shared transformer: tiny model, tiny random discrete streams."""

import pytest
import torch
from mmtok_plugin_hsi.model.head import HSIGuidanceHead

from mmtok import Features, MmtokError, ModelConfig, MultimodalMaskedTransformer, StreamSpec, TokenBatch, TokenStream
from mmtok.testing import torch_threads

IR, ELEV = "tok_infrared_image", "tok_elevation_map"
STREAMS = {"tok_hsi_cube": StreamSpec(vocab_size=16, grid=(2, 2, 2)),
           IR: StreamSpec(vocab_size=8, grid=(2, 2)),
           "tok_labels": StreamSpec(vocab_size=5, grid=(2,)),  # neither side: ignored by the head
           ELEV: StreamSpec(vocab_size=6, grid=(3,))}
B = 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for these tiny tensors, restored afterwards."""
    with torch_threads(1):
        yield


def _model(streams=STREAMS) -> MultimodalMaskedTransformer:
    torch.manual_seed(0)
    return MultimodalMaskedTransformer(streams, ModelConfig(d_model=32, num_heads=4, encoder_depth=1,
                                                           decoder_depth=1))


def _batch(absent: dict[str, list[int]] | None = None, seed: int = 0) -> TokenBatch:
    """Random ids for every stream; ``absent``: stream -> samples whose ``present`` is False."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in STREAMS.items():
        present = torch.ones(B, dtype=torch.bool)
        present[(absent or {}).get(k, [])] = False
        out[k] = TokenStream(grid=s.grid, ids=torch.randint(0, s.vocab_size, (B, s.num_tokens), generator=g),
                             vocab_size=s.vocab_size, present=present)
    return TokenBatch(out)


def _scrambled(batch: TokenBatch, keys, rows=None, seed: int = 1) -> TokenBatch:
    """``batch`` with new random ids in streams ``keys`` (only at ``rows`` if given)."""
    g = torch.Generator().manual_seed(seed)
    new = {}
    for k in keys:
        s = batch[k]
        ids = s.ids.clone()
        fresh = torch.randint(0, s.vocab_size, ids.shape, generator=g)
        sel = slice(None) if rows is None else rows
        ids[sel] = fresh[sel]
        new[k] = TokenStream(grid=s.grid, ids=ids, vocab_size=s.vocab_size, present=s.present)
    return batch.replace(**new)


def _head(model, **config) -> HSIGuidanceHead:
    torch.manual_seed(1)
    return HSIGuidanceHead(d_model=model.config.d_model, streams=model.streams, shared_dim=8, **config)


def _grads(*modules) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()
            if p.grad is not None}


def test_loss_is_finite_and_trains_the_transformer_and_the_head():
    model = _model()
    head = _head(model)
    assert head.hsi_streams == ["tok_hsi_cube"] and head.aux_streams == [IR, ELEV]  # AF / thickness: not in model
    batch = _batch({IR: [0]})
    loss = head.loss(model.encode_present(batch), batch, model=model)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for p in (head.hsi_proj.weight, head.hsi_pool.query, head.aux_proj[IR].weight, head.aux_pool[ELEV].query,
              head.logit_scale[IR].log_scale, model.encoder[0].attn.q.weight, model.token_embedding.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the symmetric InfoNCE of each auxiliary, by hand, averaged
    with torch.no_grad():
        hsi = head.embed_hsi(model, batch)
        want = []
        for key, rows in ((IR, torch.arange(1, B)), (ELEV, torch.arange(B))):
            aux = head.embed_aux(model, batch, key)[rows]
            logits = hsi[rows] @ aux.T / 0.07
            labels = torch.arange(len(rows))
            want.append((torch.nn.functional.cross_entropy(logits, labels)
                         + torch.nn.functional.cross_entropy(logits.T, labels)) / 2)
    torch.testing.assert_close(loss.detach(), torch.stack(want).mean(), rtol=1e-4, atol=1e-5)


def test_samples_lacking_an_auxiliary_are_excluded():
    model = _model()
    head = _head(model)
    absent = {IR: [0, 1], ELEV: [2]}
    batch = _batch(absent)
    results = []
    for b in (batch, _scrambled(_scrambled(batch, [IR], torch.tensor([0, 1])), [ELEV], torch.tensor([2]), seed=2)):
        model.zero_grad()
        head.zero_grad()
        loss = head.loss(None, b, model=model)
        loss.backward()
        results.append((loss.detach(), _grads(model, head), head.metrics()))
    (loss_a, grads_a, metrics_a), (loss_b, grads_b, _) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=0, atol=1e-7, msg=k)
    assert metrics_a[f"{IR}/pairs"] == 4 and metrics_a[f"{ELEV}/pairs"] == 5 and metrics_a["terms"] == 2
    # a sample without HSI pairs with nothing; a stream missing from the batch is absent everywhere
    head.loss(None, _batch({"tok_hsi_cube": [5], IR: [0, 1]}), model=model)
    assert head.metrics()[f"{IR}/pairs"] == 3 and head.metrics()[f"{ELEV}/pairs"] == 5
    no_ir = TokenBatch({k: s for k, s in batch.items() if k != IR})
    head.loss(None, no_ir, model=model)
    assert head.metrics()[f"{IR}/pairs"] == 0 and head.metrics()["terms"] == 1


def test_fewer_than_two_pairs_give_a_zero_that_keeps_the_graph():
    model = _model()
    head = _head(model)
    batch = _batch({IR: [1, 2, 3, 4, 5], ELEV: list(range(B))})
    features = model.encode_present(batch)
    loss = head.loss(features, batch, model=model)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    assert model.encoder[0].attn.q.weight.grad is not None
    assert head.metrics() == {f"{IR}/pairs": 1.0, f"{ELEV}/pairs": 0.0, "terms": 0.0}


def test_a_model_without_the_needed_streams_is_a_clear_error():
    no_aux = {k: s for k, s in STREAMS.items() if k not in (IR, ELEV)}
    with pytest.raises(MmtokError, match=r"needs an HSI stream of \['tok_hsi_cube'\] and an auxiliary stream of "
                                         r"\['tok_infrared_image', .*'tok_elevation_map'\]; the model has"):
        HSIGuidanceHead(d_model=32, streams=no_aux)
    with pytest.raises(MmtokError, match="needs an HSI stream"):
        HSIGuidanceHead(d_model=32, streams={IR: STREAMS[IR]})
    with pytest.raises(MmtokError, match="temperature > 0"):
        HSIGuidanceHead(d_model=32, streams=STREAMS, temperature=0.0)
    # streams named in config that the model lacks are ignored; a fixed temperature is a buffer
    head = HSIGuidanceHead(d_model=32, streams=STREAMS, aux_streams=["tok_thickness_map", ELEV],
                           learnable_temperature=False)
    assert head.aux_streams == [ELEV] and not any("log_scale" in n for n, _ in head.named_parameters())


def test_the_hsi_embedding_never_sees_an_auxiliary():
    model = _model()
    head = _head(model)
    batch = _batch()
    with torch.no_grad():
        emb = head.embed_hsi(model, batch)
        scrambled = head.embed_hsi(model, _scrambled(batch, [IR, ELEV, "tok_labels"]))
        alone = head.embed_hsi(model, TokenBatch({"tok_hsi_cube": batch["tok_hsi_cube"]}))
        joint = head._hsi_embedding(model.encode_present(batch))  # what a joint pass would give
    assert emb.shape == (B, 8)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(B))
    assert torch.equal(emb, scrambled)
    torch.testing.assert_close(emb, alone, rtol=0, atol=1e-6)
    assert not torch.allclose(emb, joint, atol=1e-4)  # the auxiliaries would have leaked in a joint pass


def test_without_the_model_it_pools_the_masked_pass_by_slot():
    model = _model()
    head = _head(model)
    batch = _batch({ELEV: [0]})
    features = model.encode_present(batch)
    loss = head.loss(features, batch)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert head.aux_proj[ELEV].weight.grad.abs().sum() > 0 and model.encoder[0].attn.q.weight.grad is not None
    # a side counts where it has visible tokens: HSI + IR in samples 0 and 2, elevation only in 2
    tokens = torch.randn(3, 4, 32, requires_grad=True)
    slots = torch.tensor([[0, 1, 8, 9], [2, 3, 12, 13], [4, 5, 10, 14]])  # 8-11 IR, 12-13 labels, 14-16 elevation
    head.loss(Features(tokens, torch.ones(3, 4, dtype=torch.bool), tokens.mean(1), slots), {})
    assert head.metrics()[f"{IR}/pairs"] == 2 and head.metrics()[f"{ELEV}/pairs"] == 1


def test_metrics_name_every_auxiliary():
    model = _model()
    head = _head(model)
    batch = _batch({ELEV: [0, 1, 2, 3, 4]})
    head.loss(None, batch, model=model)
    metrics = head.metrics()
    assert set(metrics) == {f"{IR}/pairs", f"{IR}/hsi_to_aux_top1", f"{IR}/temperature", f"{ELEV}/pairs", "terms"}
    assert metrics[f"{IR}/pairs"] == B and 0 <= metrics[f"{IR}/hsi_to_aux_top1"] <= 1
    assert metrics[f"{IR}/temperature"] == pytest.approx(0.07) and metrics["terms"] == 1
    assert all(isinstance(v, float) for v in metrics.values())


def test_the_plugin_builds_the_head_for_the_hsi_guided_bundle():
    import mmtok

    manager = mmtok.get_plugin_manager()
    bundle = manager.bundle("hsi-guided")
    assert "hsi-guidance" in bundle.heads
    grids = {"tok_hsi_cube": (2, 2, 2)}
    streams = {k: StreamSpec(vocab_size=8, grid=grids.get(k, (2, 2))) for k in bundle.streams}
    model = _model(streams)
    head = manager.head("hsi-guidance").factory(d_model=32, streams=model.streams, shared_dim=8)
    assert isinstance(head, HSIGuidanceHead) and head.uses_model
    # the head's defaults cover the bundle: the cube on one side, every other stream an auxiliary
    assert head.hsi_streams == ["tok_hsi_cube"] and set(head.aux_streams) == set(bundle.streams) - {"tok_hsi_cube"}
    g = torch.Generator().manual_seed(0)
    batch = TokenBatch({k: TokenStream(grid=s.grid, ids=torch.randint(0, 8, (4, s.num_tokens), generator=g),
                                       vocab_size=8, present=torch.tensor([True, True, True, k == "tok_hsi_cube"]))
                        for k, s in streams.items()})
    loss = head.loss(model.encode_present(batch), batch, model=model)
    assert torch.isfinite(loss) and head.metrics()["terms"] == len(head.aux_streams)
    assert all(head.metrics()[f"{k}/pairs"] == 3 for k in head.aux_streams)

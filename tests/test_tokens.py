import pytest
import torch

from mmtok import CodecError, TokenBatch, TokenStream


def stream(b=3, n=6, vocab=10):
    return TokenStream(grid=(2, 3), present=torch.ones(b, dtype=torch.bool),
                       ids=torch.randint(vocab, (b, n)), vocab_size=vocab)


def test_discrete_and_continuous():
    s = stream()
    assert s.is_discrete and s.num_tokens == 6 and len(s) == 3
    c = TokenStream(grid=(4,), present=torch.ones(2, dtype=torch.bool), values=torch.randn(2, 4, 8))
    assert not c.is_discrete and c.tokens.shape == (2, 4, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(grid=(2, 2)), "grid"),
    (dict(ids=None), "exactly one"),
    (dict(vocab_size=None), "vocab_size"),
    (dict(present=torch.ones(2, dtype=torch.bool)), "present"),
    (dict(ids=torch.zeros(3, 6, dtype=torch.int32)), "int64"),
])
def test_invalid_streams(kwargs, match):
    base = dict(grid=(2, 3), present=torch.ones(3, dtype=torch.bool),
                ids=torch.zeros(3, 6, dtype=torch.long), vocab_size=10)
    with pytest.raises(CodecError, match=match):
        TokenStream(**{**base, **kwargs})


def test_absent_cat_index():
    s = stream()
    a = TokenStream.absent(s, 2)
    assert not a.present.any() and a.ids.shape == (2, 6)
    both = TokenStream.cat([s, a])
    assert both.present.tolist() == [True, True, True, False, False]
    assert torch.equal(both[1].ids, s.ids[1:2])


def test_token_batch():
    tb = TokenBatch({"tok_a": stream(), "tok_b": stream(vocab=5)})
    assert tb.batch_size == 3 and list(tb) == ["tok_a", "tok_b"]
    assert tb.present().shape == (3, 2)
    with pytest.raises(KeyError, match="tok_c"):
        tb["tok_c"]
    with pytest.raises(CodecError, match="batch sizes"):
        TokenBatch({"tok_a": stream(b=3), "tok_b": stream(b=2)})

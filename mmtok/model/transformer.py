"""`MultimodalMaskedTransformer`: one encoder-decoder over every token stream (4M / AION-1).

A batch is a `mmtok.TokenBatch` (token key -> `TokenStream`: ``ids`` (b, n_key) for discrete
streams, ``values`` (b, n_key, dim) for continuous ones, ``present`` (b,)); a stream missing from
the batch is absent from every sample. The encoder sees the input slots of `Masks`, the decoder asks
for the target slots (mask token + position + stream embedding, cross-attending to the
encoder). Absent streams are never inputs or targets, so they never reach the loss.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mmtok.errors import MmtokError
from mmtok.model.config import ModelConfig, StreamSpec
from mmtok.model.layers import DecoderBlock, EncoderBlock, grid_sincos
from mmtok.model.masking import Masks, StreamLayout
from mmtok.tokens import TokenBatch, TokenStream

__all__ = ["Features", "ModelOutput", "MultimodalMaskedTransformer"]


@dataclasses.dataclass
class Features:
    """Encoder output. tokens: (b, k, d) per visible token; valid: (b, k); pooled: (b, d), the
    mean over valid tokens; slots: (b, k) sequence slot of each token."""

    tokens: Float[Tensor, "b k d"]
    valid: Bool[Tensor, "b k"]
    pooled: Float[Tensor, "b d"]
    slots: Int[Tensor, "b k"]


@dataclasses.dataclass
class ModelOutput:
    """loss: scalar to minimise. Per stream (s,), detached, summed over the batch's valid targets:
    loss_sum, count and (discrete streams) correct = arg-max hits. features: the encoder output."""

    loss: Tensor
    loss_sum: Tensor
    count: Tensor
    correct: Tensor
    features: Features


class MultimodalMaskedTransformer(nn.Module):
    """4M-style masked multimodal encoder-decoder over the streams of ``streams``."""

    def __init__(self, streams: dict[str, StreamSpec], config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        self.streams = {k: StreamSpec.model_validate(v) for k, v in streams.items()}
        self.layout = lay = StreamLayout(self.streams)
        d = config.d_model
        self.token_embedding = nn.Embedding(max(lay.total_vocab, 1), d)
        self.value_embedding = nn.ModuleDict({k: nn.Linear(s.dim, d) for k, s in self.streams.items()
                                              if not s.is_discrete})
        self.stream_embedding = nn.Parameter(torch.zeros(len(lay), d))
        self.mask_token = nn.Parameter(torch.zeros(d))
        pos = torch.cat([grid_sincos(s.grid, d) for s in self.streams.values()])
        self.register_buffer("position", pos, persistent=False)
        self.register_buffer("stream_of", lay.stream_of.clone(), persistent=False)
        self.register_buffer("vocab_offset", lay.vocab_offset.clone(), persistent=False)
        # logits of a target may only use its own stream's slice of the joint vocabulary
        bias = torch.full((len(lay), max(lay.total_vocab, 1)), float("-inf"))
        for s, spec in enumerate(self.streams.values()):
            if spec.is_discrete:
                bias[s, lay.vocab_offset[s]:lay.vocab_offset[s] + spec.vocab_size] = 0.0
        self.register_buffer("vocab_bias", bias, persistent=False)
        self._first_discrete_slot = int(lay.start[lay.discrete.nonzero()[0, 0]]) if lay.total_vocab else 0
        self.encoder = nn.ModuleList(EncoderBlock(d, config.num_heads, config.mlp_ratio, config.dropout)
                                     for _ in range(config.encoder_depth))
        self.encoder_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(DecoderBlock(d, config.num_heads, config.mlp_ratio, config.dropout)
                                     for _ in range(config.decoder_depth))
        self.decoder_norm = nn.LayerNorm(d)
        self.token_head = nn.Linear(d, max(lay.total_vocab, 1))
        self.value_head = nn.ModuleDict({k: nn.Linear(d, s.dim) for k, s in self.streams.items()
                                         if not s.is_discrete})
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.stream_embedding, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ batch -> sequence
    def presence(self, batch: TokenBatch) -> Bool[Tensor, "b s"]:
        """(b, s) which streams each sample has."""
        b = _batch_size(batch)
        device = self.position.device
        cols = []
        for key in self.layout.keys:
            s = batch.get(key)
            cols.append(torch.zeros(b, dtype=torch.bool, device=device) if s is None else s.present.to(device))
        return torch.stack(cols, 1)

    def _ids(self, batch: TokenBatch, b: int) -> Int[Tensor, "b n"]:
        """Joint-vocabulary ids of every slot (0 for continuous or absent streams)."""
        parts = []
        for s, (key, spec) in enumerate(self.streams.items()):
            stream = batch.get(key) if spec.is_discrete else None
            ids = None if stream is None else stream.ids
            if ids is None:
                parts.append(torch.zeros(b, spec.num_tokens, dtype=torch.long, device=self.position.device))
            else:
                parts.append(ids.to(self.position.device).long() + self.vocab_offset[s])
        return torch.cat(parts, 1)

    def _embed_slots(self, batch: TokenBatch, ids: Tensor, idx: Int[Tensor, "b k"]) -> Tensor:
        x = self.token_embedding(ids.gather(1, idx))
        if len(self.value_embedding):  # continuous streams: project their values into the slots
            for key, proj in self.value_embedding.items():
                values = _values(batch, key)
                if values is None:
                    continue
                v, here = self.layout.gather(key, values.to(x.device), idx)
                x = torch.where(here.unsqueeze(-1), proj(v.to(x.dtype)), x)
        return x + self.position[idx] + F.embedding(self.stream_of[idx], self.stream_embedding)

    # ------------------------------------------------------------------ encoder / decoder
    def encode(self, batch: TokenBatch, idx: Int[Tensor, "b k"], valid: Bool[Tensor, "b k"],
               ids: Tensor | None = None) -> Features:
        """Encode the slots ``idx`` (valid entries) of each sample."""
        ids = self._ids(batch, idx.shape[0]) if ids is None else ids
        x = self._embed_slots(batch, ids, idx)
        keys = _at_least_one(valid)
        for block in self.encoder:
            x = block(x, keys)
        x = self.encoder_norm(x)
        w = valid.unsqueeze(-1).to(x.dtype)
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1)
        return Features(x, valid, pooled, idx)

    def decode(self, features: Features, idx: Int[Tensor, "b m"], valid: Bool[Tensor, "b m"]) -> Tensor:
        """(b, m, d) decoder states for the target slots ``idx``."""
        q = self.mask_token + self.position[idx] + F.embedding(self.stream_of[idx], self.stream_embedding)
        q_keys, ctx_keys = _at_least_one(valid), _at_least_one(features.valid)
        for block in self.decoder:
            q = block(q, q_keys, features.tokens, ctx_keys)
        return self.decoder_norm(q)

    def logits(self, h: Float[Tensor, "b m d"], idx: Int[Tensor, "b m"]) -> Float[Tensor, "b m v"]:
        """fp32 logits over the joint vocabulary, -inf outside each target's own stream. Costs the
        whole joint vocabulary per target: `stream_logits` computes only one stream's slice."""
        return self.token_head(h).float() + self.vocab_bias[self.stream_of[idx]]

    def stream_logits(self, h: Float[Tensor, "... d"], s: int) -> Float[Tensor, "... v_s"]:
        """fp32 logits of stream ``s``'s own vocabulary only (its rows of the joint head): equal to
        `logits` restricted to the slice, at vocab_s / total_vocab of its cost."""
        sl = self._vocab_slice(s)
        return F.linear(h, self.token_head.weight[sl], self.token_head.bias[sl]).float()

    def _vocab_slice(self, s: int) -> slice:
        """Stream s's range in the joint vocabulary."""
        start = int(self.layout.vocab_offset[s])  # the CPU copy: no device sync, no graph break
        return slice(start, start + self.streams[self.layout.keys[s]].vocab_size)

    # ------------------------------------------------------------------ training
    def forward(self, batch: TokenBatch, masks: Masks, normalizer: Tensor | float | None = None,
                token_weight: Float[Tensor, "v"] | None = None) -> ModelOutput:
        """Masked-modelling loss: cross-entropy on discrete targets, ``continuous_loss`` on
        continuous ones, summed over valid targets and divided by ``normalizer`` (default: their
        count; a distributed trainer passes the global count / world size). ``token_weight``
        (joint vocabulary size) scales each discrete target's cross-entropy by its token's weight
        (class weighting of imbalanced streams); counts and accuracies stay unweighted."""
        masks = masks.to(self.position.device)
        b = masks.input_idx.shape[0]
        ids = self._ids(batch, b)
        features = self.encode(batch, masks.input_idx, masks.input_valid, ids)
        h = self.decode(features, masks.target_idx, masks.target_valid)
        tgt_stream = self.stream_of[masks.target_idx]
        valid = masks.target_valid
        token_loss = torch.zeros(valid.shape, device=h.device)
        hit = torch.zeros(valid.shape, device=h.device)
        if self.layout.total_vocab:
            discrete = self.layout.discrete.to(h.device)[tgt_stream] & valid
            if torch.compiler.is_compiling():  # one graph: no data-dependent shapes, no host sync
                ce, hit = self._discrete_loss_dense(h, masks.target_idx, ids, discrete, token_weight)
            else:
                ce, hit = self._discrete_loss(h, tgt_stream, ids.gather(1, masks.target_idx), discrete,
                                              token_weight)
            token_loss = torch.where(discrete, ce, token_loss)
        for key, head in self.value_head.items():
            values = _values(batch, key)
            if values is None:
                continue
            true, here = self.layout.gather(key, values.to(h.device).float(), masks.target_idx)
            here = here & valid
            pred = head(h).float()
            err = (pred - true).pow(2) if self.config.continuous_loss == "mse" else (pred - true).abs()
            token_loss = torch.where(here, err.mean(-1), token_loss)
        token_loss = token_loss * valid
        n = len(self.layout)
        loss_sum = torch.zeros(n, device=h.device).index_add_(0, tgt_stream.flatten(), token_loss.flatten())
        count = torch.zeros(n, device=h.device).index_add_(0, tgt_stream.flatten(), valid.float().flatten())
        correct = torch.zeros(n, device=h.device).index_add_(0, tgt_stream.flatten(), hit.flatten())
        norm = count.sum().clamp_min(1) if normalizer is None else normalizer
        return ModelOutput(token_loss.sum() / norm, loss_sum.detach(), count, correct, features)

    def _discrete_loss_dense(self, h: Float[Tensor, "b m d"], target_idx: Int[Tensor, "b m"],
                             ids: Int[Tensor, "b n"], discrete: Bool[Tensor, "b m"],
                             token_weight: Tensor | None) -> tuple[Float[Tensor, "b m"], Float[Tensor, "b m"]]:
        """`_discrete_loss` with static shapes (what torch.compile gets): every target scored over
        the joint vocabulary, -inf outside its stream. The same numbers at total_vocab / vocab_s
        the cost."""
        # padding / continuous positions score a dummy id of the first discrete stream, so every
        # row of the cross-entropy is finite (a row of -inf would give NaN gradients)
        safe = torch.where(discrete, target_idx, self._first_discrete_slot)
        logits = self.logits(h, safe)
        target = ids.gather(1, safe)
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
        if token_weight is not None:
            ce = ce * token_weight.to(ce.device)[target]
        return torch.where(discrete, ce, 0.0), (discrete & (logits.argmax(-1) == target)).float()

    def _discrete_loss(self, h: Float[Tensor, "b m d"], tgt_stream: Int[Tensor, "b m"],
                       target: Int[Tensor, "b m"], discrete: Bool[Tensor, "b m"],
                       token_weight: Tensor | None) -> tuple[Float[Tensor, "b m"], Float[Tensor, "b m"]]:
        """(b, m) cross-entropy and hits of the discrete targets (0 elsewhere), each target scored
        against its own stream's vocabulary only: the targets are grouped by stream (one sort, one
        host read of the counts), so a step costs the targets' own vocabularies, not the joint one
        (13,525 ids over every example's streams against 20-1000 per stream)."""
        flat = discrete.flatten().nonzero().squeeze(1)
        streams = tgt_stream.flatten()[flat]
        streams, order = streams.sort(stable=True)
        rows = flat[order]
        hs, joint = h.flatten(0, 1)[rows], target.flatten()[rows]
        counts = torch.bincount(streams, minlength=len(self.layout)).tolist()
        ces, hits, start = [], [], 0
        for s, count in enumerate(counts):
            if not count:
                continue
            logits = self.stream_logits(hs[start:start + count], s)
            local = joint[start:start + count] - self._vocab_slice(s).start
            ce = F.cross_entropy(logits, local, reduction="none")
            if token_weight is not None:
                ce = ce * token_weight.to(ce.device)[joint[start:start + count]]
            ces.append(ce)
            hits.append((logits.argmax(-1) == local).float())
            start += count
        ce_out = h.new_zeros(discrete.numel(), dtype=torch.float32)
        hit_out = torch.zeros_like(ce_out)
        if ces:
            ce_out = ce_out.index_put((rows,), torch.cat(ces))
            hit_out = hit_out.index_put((rows,), torch.cat(hits))
        return ce_out.view(discrete.shape), hit_out.view(discrete.shape)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def embed(self, batch: TokenBatch) -> Features:
        """Encoder features of every token of every present stream (no masking)."""
        return self.encode_present(batch)

    def encode_present(self, batch: TokenBatch) -> Features:
        """`embed` with gradients: for heads that encode views of a batch while training."""
        present = self.presence(batch)
        slots = present[:, self.stream_of]
        masks = Masks.from_selection(slots, torch.zeros_like(slots), k_tgt=1)
        return self.encode(batch, masks.input_idx.to(present.device), masks.input_valid)

    @torch.no_grad()
    def predict(self, batch: TokenBatch, stream: str, steps: int = 8,
                temperature: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """Predict stream ``stream`` of every sample from its *other* present streams.

        Discrete streams: MaskGIT-style iterative decoding in ``steps`` rounds. Each round
        predicts every still-masked token, keeps the most confident ones (cosine schedule) and
        feeds them back to the encoder as inputs. ``temperature`` 0 takes the arg-max. Returns
        (b, n) stream-local ids. Continuous streams: one pass, (b, n, dim) values.
        """
        s = self.layout.index(stream)
        sl = self.layout.slots(stream)
        spec = self.streams[stream]
        present = self.presence(batch)
        b, n_s = present.shape[0], spec.num_tokens
        others = present[:, self.stream_of] & (self.stream_of != s)
        target_slots = torch.zeros_like(others)
        target_slots[:, sl] = True
        if not spec.is_discrete:
            masks = Masks.from_selection(others, target_slots, k_tgt=n_s).to(others.device)
            h = self.decode(self.encode(batch, masks.input_idx, masks.input_valid), masks.target_idx,
                            masks.target_valid)
            return self.value_head[stream](h).float()
        pred = torch.zeros(b, n_s, dtype=torch.long, device=others.device)
        done = torch.zeros(b, n_s, dtype=torch.bool, device=others.device)
        steps = max(1, min(steps, n_s))
        for t in range(steps):
            work = batch.replace(**{stream: TokenStream(grid=spec.grid, ids=pred, vocab_size=spec.vocab_size,
                                                        present=torch.ones(b, dtype=torch.bool, device=pred.device))})
            inputs = others.clone()
            inputs[:, sl] = done
            targets = torch.zeros_like(others)
            targets[:, sl] = ~done
            masks = Masks.from_selection(inputs, targets, k_tgt=n_s - int(done[0].sum()))
            ids = self._ids(work, b)
            h = self.decode(self.encode(work, masks.input_idx, masks.input_valid, ids), masks.target_idx,
                            masks.target_valid)
            logits = self.stream_logits(h, s)
            if temperature > 0:
                probs = torch.softmax(logits / temperature, -1)
                choice = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(logits.shape[:2])
            else:
                probs = torch.softmax(logits, -1)
                choice = probs.argmax(-1)
            conf = probs.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
            conf = torch.where(masks.target_valid, conf, -1.0)
            goal = n_s if t == steps - 1 else math.ceil(n_s * (1 - math.cos(math.pi / 2 * (t + 1) / steps)))
            k = max(goal - int(done[0].sum()), 1)
            keep = conf.topk(min(k, conf.shape[1]), dim=1).indices
            local = (masks.target_idx - sl.start).gather(1, keep)
            pred.scatter_(1, local, choice.gather(1, keep))
            done.scatter_(1, local, True)
        return pred

    @torch.no_grad()
    def predict_proba(self, batch: TokenBatch, stream: str) -> Float[Tensor, "b n v"]:
        """(b, n, vocab) token distributions of discrete stream ``stream``, all its tokens at once,
        given the sample's *other* present streams (one pass, no iterative decoding)."""
        s = self.layout.index(stream)
        if not self.streams[stream].is_discrete:
            raise MmtokError(f"{stream!r} is continuous; use predict()")
        present = self.presence(batch)
        others = present[:, self.stream_of] & (self.stream_of != s)
        targets = torch.zeros_like(others)
        targets[:, self.layout.slots(stream)] = True
        masks = Masks.from_selection(others, targets, k_tgt=self.streams[stream].num_tokens)
        h = self.decode(self.encode(batch, masks.input_idx, masks.input_valid), masks.target_idx,
                        masks.target_valid)
        return torch.softmax(self.stream_logits(h, s), -1)

    @torch.no_grad()
    def impute(self, batch: TokenBatch, stream: str, **kwargs) -> Tensor:
        """Like `predict`, but samples that have the stream keep their own tokens."""
        pred = self.predict(batch, stream, **kwargs)
        own = batch.get(stream)
        if own is None:
            return pred
        keep = own.present.to(pred.device).view(-1, *([1] * (pred.dim() - 1)))
        return torch.where(keep, own.tokens.to(pred.device).to(pred.dtype), pred)


def _values(batch: TokenBatch, key: str) -> Tensor | None:
    """Continuous tokens (b, n, d) of stream ``key``, None when the batch lacks it."""
    s = batch.get(key)
    return None if s is None else s.values


def _batch_size(batch: TokenBatch) -> int:
    if not isinstance(batch, TokenBatch):
        raise MmtokError(f"the model takes a TokenBatch (mmtok.TokenShards.batch), found {type(batch).__name__}")
    if not len(batch):
        raise MmtokError("the batch has no token streams")
    return batch.batch_size


def _at_least_one(valid: Bool[Tensor, "b k"]) -> Bool[Tensor, "b k"]:
    """Let rows with no valid key attend to slot 0 (its output is ignored) instead of NaN."""
    first = torch.zeros_like(valid)
    first[:, 0] = True
    return valid | (first & ~valid.any(1, keepdim=True))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.trunc_normal_(m.weight, std=0.02)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

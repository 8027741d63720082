"""``hsi-guidance``: the seed's contrastive guidance as a head on mmtok's shared transformer.

The auxiliary images (infrared, autofluorescence, thickness, elevation) guide the HSI
representation: the pooled HSI latent of a sample is pulled towards the pooled embedding of each
auxiliary image of the same sample and pushed from those of the other samples (symmetric InfoNCE,
cosine similarity, temperature). Inference runs on HSI alone, so the two sides are encoded apart
(as CLIP does): the HSI streams in one pass of the shared encoder with only them present
(``model.encode_present``), each auxiliary stream in its own pass with only that stream present.
The HSI embedding a probe uses therefore never saw an auxiliary. A sample lacking an auxiliary
(``present`` False, or the stream missing from the batch) takes no part in that auxiliary's term;
the loss is the mean of the terms of the auxiliaries with at least 2 such pairs in the batch.

Without ``model`` (a caller that only has the masked pass's `Features`), each side is pooled from
that pass's visible tokens, by slot.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from mmtok import MmtokError, StreamLayout, TokenBatch
from mmtok.nn import Attention

__all__ = ["AttentionPool", "HSIGuidanceHead"]

_OTHER, _HSI = -1, 0  # slot roles; auxiliary stream i has role i + 1


class AttentionPool(nn.Module):
    """A learned query attends over the valid tokens: x (b, n, d), valid (b, n) -> (b, d).
    A row with no valid token pools over all of them (callers leave such rows out)."""

    def __init__(self, dim: int, num_heads: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, x: Float[Tensor, "b n d"], valid: Bool[Tensor, "b n"]) -> Float[Tensor, "b d"]:
        valid = valid | ~valid.any(1, keepdim=True)
        return self.attn(self.query.expand(x.shape[0], -1, -1).to(x.dtype), valid, context=self.norm(x))[:, 0]


class _LogitScale(nn.Module):
    """CLIP's ``1 / temperature``, learned (or fixed) in log space, clamped at 100."""

    def __init__(self, temperature: float, learnable: bool):
        super().__init__()
        value = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)

    def forward(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()


def _keys(value, field: str) -> tuple[str, ...]:
    keys = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(k, str) for k in keys):
        raise MmtokError(f"hsi-guidance: {field} must be stream keys (strings), found {value!r}")
    return keys


class HSIGuidanceHead(nn.Module):
    """``factory(d_model=..., streams=..., **config)`` of the ``hsi-guidance`` head.

    ``streams``: the model's stream specs, in sequence order (`StreamLayout`). ``hsi_streams`` /
    ``aux_streams`` named here that the model lacks are ignored; it needs one of each.
    ``shared_dim``: size of the unit-norm shared space; ``temperature``: initial InfoNCE temperature
    (one per auxiliary, learned when ``learnable_temperature``); ``num_heads``: of the attention
    pools (default 4 when ``d_model`` allows, else 1).

    ``loss(features, batch, model=None)`` -> scalar: mean over the auxiliaries with >= 2 samples
    having both HSI and that auxiliary, of the symmetric InfoNCE over those samples; a 0 that keeps
    every parameter in the graph when no term applies.
    """

    uses_model = True

    def __init__(self, d_model: int, streams: dict, hsi_streams=("tok_hsi_cube",),
                 aux_streams=("tok_infrared_image", "tok_autofluorescence_image", "tok_thickness_map",
                              "tok_elevation_map"),
                 shared_dim: int = 128, temperature: float = 0.07, learnable_temperature: bool = True,
                 num_heads: int | None = None):
        super().__init__()
        hsi_streams, aux_streams = _keys(hsi_streams, "hsi_streams"), _keys(aux_streams, "aux_streams")
        layout = StreamLayout(streams)
        hsi = [k for k in hsi_streams if k in layout.streams]
        aux = [k for k in aux_streams if k in layout.streams and k not in hsi]
        if not hsi or not aux:
            raise MmtokError(f"hsi-guidance: needs an HSI stream of {list(hsi_streams)} and an auxiliary stream of "
                             f"{list(aux_streams)}; the model has {layout.keys}")
        if shared_dim < 1 or not temperature > 0:
            raise MmtokError(f"hsi-guidance: shared_dim must be >= 1 and temperature > 0, found {shared_dim} "
                             f"and {temperature}")
        heads = num_heads or (4 if d_model % 4 == 0 else 1)
        if d_model % heads:
            raise MmtokError(f"hsi-guidance: num_heads must divide d_model {d_model}, found {heads}")
        self.hsi_streams, self.aux_streams = hsi, aux
        role = torch.full((layout.total,), _OTHER, dtype=torch.long)
        for k in hsi:
            role[layout.slots(k)] = _HSI
        for i, k in enumerate(aux):
            role[layout.slots(k)] = i + 1
        self.register_buffer("role_of_slot", role, persistent=False)
        self.hsi_pool = AttentionPool(d_model, heads)
        self.hsi_proj = nn.Linear(d_model, shared_dim)
        self.aux_pool = nn.ModuleDict({k: AttentionPool(d_model, heads) for k in aux})
        self.aux_proj = nn.ModuleDict({k: nn.Linear(d_model, shared_dim) for k in aux})
        self.logit_scale = nn.ModuleDict({k: _LogitScale(temperature, learnable_temperature) for k in aux})
        self._last: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ embeddings
    def _role(self, features, role: int) -> Bool[Tensor, "b k"]:
        return (self.role_of_slot[features.slots] == role) & features.valid

    def _hsi_embedding(self, features) -> Float[Tensor, "b e"]:
        pooled = self.hsi_pool(features.tokens, self._role(features, _HSI))
        return F.normalize(self.hsi_proj(pooled), dim=-1)

    def _aux_embedding(self, features, key: str) -> Float[Tensor, "b e"]:
        pooled = self.aux_pool[key](features.tokens, self._role(features, self.aux_streams.index(key) + 1))
        return F.normalize(self.aux_proj[key](pooled), dim=-1)

    def hsi_view(self, batch: TokenBatch) -> TokenBatch:
        """``batch`` with only the HSI streams present."""
        return batch.without([k for k in batch if k not in self.hsi_streams])

    def embed_hsi(self, model, batch: TokenBatch) -> Float[Tensor, "b e"]:
        """(b, shared_dim) unit-norm HSI embeddings from one encoder pass with only the HSI streams
        present (no auxiliary can reach them). Rows without an HSI stream are meaningless. Keeps
        gradients: wrap in ``torch.no_grad()`` for probes."""
        return self._hsi_embedding(model.encode_present(self.hsi_view(batch)))

    def embed_aux(self, model, batch: TokenBatch, key: str) -> Float[Tensor, "b e"]:
        """(b, shared_dim) unit-norm embeddings of auxiliary stream ``key``, encoded alone."""
        if key not in self.aux_streams:
            raise MmtokError(f"hsi-guidance: no auxiliary stream {key!r}; the head aligns {self.aux_streams}")
        return self._aux_embedding(model.encode_present(batch.without([k for k in batch if k != key])), key)

    @staticmethod
    def _present(batch: TokenBatch, keys, b: int) -> Bool[Tensor, " b"]:
        flags = [batch[k].present.bool() for k in keys if k in batch]
        return torch.stack(flags).any(0) if flags else torch.zeros(b, dtype=torch.bool)

    # ------------------------------------------------------------------ loss
    def _info_nce(self, key: str, hsi: Float[Tensor, "m e"], aux: Float[Tensor, "m e"]) -> Tensor:
        logits = self.logit_scale[key]() * hsi.float() @ aux.float().T
        labels = torch.arange(len(hsi), device=hsi.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        with torch.no_grad():
            self._last[f"{key}/pairs"] = torch.tensor(float(len(hsi)))
            self._last[f"{key}/hsi_to_aux_top1"] = (logits.argmax(1) == labels).float().mean()
            self._last[f"{key}/temperature"] = 1.0 / self.logit_scale[key]().detach()
        return loss

    def _zero(self, features) -> Tensor:
        """A 0 that depends on every head parameter (and the masked pass), as DDP wants."""
        zero = sum(p.sum() for p in self.parameters()) * 0.0
        return zero + features.tokens.sum() * 0.0 if features is not None else zero

    def loss(self, features, batch: TokenBatch, model=None) -> Tensor:
        """Mean symmetric InfoNCE between the HSI embedding and each auxiliary's, over the samples
        that have both (see the class docstring). ``features``: the masked pass's `Features`
        (used only without ``model``); ``model``: the shared transformer."""
        b = batch.batch_size if isinstance(batch, TokenBatch) else features.tokens.shape[0]
        self._last = {}
        if model is None:  # pool the masked pass: a side counts where it has visible tokens
            hsi = self._hsi_embedding(features)
            hsi_has = self._role(features, _HSI).any(1)
        else:
            hsi = None
            hsi_has = self._present(batch, self.hsi_streams, b)
        terms = []
        for i, key in enumerate(self.aux_streams):
            aux_has = (self._role(features, i + 1).any(1) if model is None else
                       self._present(batch, (key,), b))
            pairs = hsi_has.to(aux_has.device) & aux_has
            self._last[f"{key}/pairs"] = pairs.sum().float()
            if int(pairs.sum()) < 2:
                continue
            if model is None:
                rows = pairs.nonzero(as_tuple=True)[0].to(hsi.device)
                terms.append(self._info_nce(key, hsi[rows], self._aux_embedding(features, key)[rows]))
                continue
            if hsi is None:
                hsi = self.embed_hsi(model, batch)
            stream = batch[key]
            rows = pairs.to(stream.present.device).nonzero(as_tuple=True)[0]
            aux = self._aux_embedding(model.encode_present(TokenBatch({key: stream[rows]})), key)
            terms.append(self._info_nce(key, hsi[rows.to(hsi.device)], aux))
        self._last["terms"] = torch.tensor(float(len(terms)))
        if not terms:
            return self._zero(features)
        return torch.stack(terms).mean() + self._zero(None)

    def metrics(self) -> dict[str, float]:
        """Of the last ``loss`` call, per auxiliary stream: ``<key>/pairs`` (samples with HSI and
        that auxiliary), and where a term was computed ``<key>/hsi_to_aux_top1`` (HSI -> auxiliary
        retrieval accuracy in the batch) and ``<key>/temperature``; ``terms``: terms averaged."""
        return {k: float(v) for k, v in self._last.items()}

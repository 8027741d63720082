"""``ct-alignment``: a contrastive head on mmtok's shared multimodal transformer.

The image streams (CT volume, anatomy mask) and the text streams (report) of each sample are
encoded in two separate passes of the shared encoder (``model.encode_present`` with only that side
present, as CLIP encodes image and text apart): in the joint masked pass both sides attend to
each other, so aligning them there teaches nothing usable at retrieval time, where only one side
exists. Each side's tokens are attention-pooled, projected to a shared space and aligned with a
bidirectional InfoNCE over the samples that have both sides. Without ``model`` (a caller that
only has the masked pass's features) it falls back to pooling that pass.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from mmtok import MmtokError, StreamLayout
from mmtok_plugin_ct.model.layers import AttentionPool
from mmtok_plugin_ct.model.losses import CrossModalContrastiveLoss, zero_like_graph

__all__ = ["CTAlignmentHead"]

_OTHER, _IMAGE, _TEXT = 0, 1, 2


class CTAlignmentHead(nn.Module):
    """``factory(d_model=..., streams=..., **config)`` of the ``ct-alignment`` head.

    ``streams``: the model's stream specs, in sequence order (`StreamLayout`); the image / text
    streams named here that the model lacks are ignored, but each side needs one.
    ``loss(features, batch)``: mmtok `Features` (tokens (b, k, d), valid (b, k), slots (b, k))
    -> scalar; a 0 that keeps the graph when fewer than 2 samples have both sides visible.
    """

    def __init__(self, d_model: int, streams: dict, image_streams: tuple[str, ...] = ("tok_ct_volume",
                                                                                     "tok_anatomy_mask"),
                 text_streams: tuple[str, ...] = ("tok_report",), shared_dim: int = 128, temperature: float = 0.07,
                 num_heads: int | None = None, learnable_temperature: bool = True, group_duplicates: bool = True):
        super().__init__()
        layout = StreamLayout(streams)
        image = [k for k in image_streams if k in layout.streams]
        text = [k for k in text_streams if k in layout.streams]
        if not image or not text:
            raise MmtokError(f"ct-alignment: needs an image stream of {list(image_streams)} and a text stream of "
                             f"{list(text_streams)}; the model has {layout.keys}")
        self.image_streams, self.text_streams, self.group_duplicates = image, text, group_duplicates
        side = torch.full((layout.total,), _OTHER, dtype=torch.long)
        for keys, code in ((image, _IMAGE), (text, _TEXT)):
            for k in keys:
                side[layout.slots(k)] = code
        self.register_buffer("side_of_slot", side, persistent=False)
        heads = num_heads or (4 if d_model % 4 == 0 else 1)
        self.image_pool = AttentionPool(d_model, heads)
        self.text_pool = AttentionPool(d_model, heads)
        self.image_proj = nn.Linear(d_model, shared_dim)
        self.text_proj = nn.Linear(d_model, shared_dim)
        self.contrastive = CrossModalContrastiveLoss(temperature, learnable_temperature)
        self._last: dict[str, Tensor] = {}

    def embed(self, features) -> tuple[Float[Tensor, "b e"], Float[Tensor, "b e"], Bool[Tensor, " b"]]:
        """Unit-norm image and text embeddings, and which samples have both sides visible."""
        side = self.side_of_slot[features.slots]
        is_img, is_txt = (side == _IMAGE) & features.valid, (side == _TEXT) & features.valid
        img = F.normalize(self.image_proj(self.image_pool(features.tokens, is_img)), dim=-1)
        txt = F.normalize(self.text_proj(self.text_pool(features.tokens, is_txt)), dim=-1)
        return img, txt, is_img.any(1) & is_txt.any(1)

    def _groups(self, batch, rows: Tensor) -> Tensor | None:
        if not self.group_duplicates:
            return None
        parts = [batch[k].ids for k in self.text_streams if k in batch and batch[k].is_discrete]
        if not parts:
            return None
        ids = torch.cat([p.reshape(p.shape[0], -1).long() for p in parts], 1).to(rows.device)[rows]
        return torch.unique(ids, dim=0, return_inverse=True)[1]

    uses_model = True

    def side_views(self, batch):
        """(image-only, text-only) views of a `TokenBatch`: the other side marked absent."""
        return batch.without(self.text_streams), batch.without(self.image_streams)

    def embed_batch(self, model, batch) -> tuple[Float[Tensor, "b e"], Float[Tensor, "b e"], Bool[Tensor, " b"]]:
        """Unit-norm image and text embeddings from one encoder pass per side."""
        image_view, text_view = self.side_views(batch)
        img = self.embed(model.encode_present(image_view))[0]
        txt = self.embed(model.encode_present(text_view))[1]
        return img, txt, self._has(batch, self.image_streams) & self._has(batch, self.text_streams)

    @staticmethod
    def _has(batch, keys) -> Tensor:
        flags = [batch[k].present for k in keys if k in batch]
        return torch.stack(flags).any(0)

    def loss(self, features, batch, model=None) -> Tensor:
        img, txt, both = self.embed_batch(model, batch) if model is not None else self.embed(features)
        if int(both.sum()) < 2:
            self._last = {"pairs": both.sum().detach().float()}
            return zero_like_graph(img, txt)
        rows = both.nonzero(as_tuple=True)[0]
        loss = self.contrastive(img[rows], txt[rows], self._groups(batch, rows))
        with torch.no_grad():
            hits = ((img[rows] @ txt[rows].T).argmax(1) == torch.arange(len(rows), device=rows.device)).float()
            self._last = {"pairs": both.sum().float(), "image_to_text_top1": hits.mean(),
                          "temperature": 1.0 / self.contrastive.logit_scale()}
        return loss

    def metrics(self) -> dict[str, float]:
        """Of the last ``loss`` call: pairs aligned, image->text top-1 accuracy, temperature."""
        return {k: float(v) for k, v in self._last.items()}

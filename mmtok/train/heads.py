"""Heads: bundle objectives trained jointly with the shared transformer.

A head comes from a plugin (`mmtok.HeadSpec`): ``factory(d_model=, streams=, **config)`` builds an
``nn.Module`` with ``loss(features, batch) -> scalar`` (the masked pass's encoder `Features` and
the `TokenBatch`). A head with ``uses_model = True`` is called ``loss(features, batch,
model=transformer)`` and may run its own encoder passes (contrastive heads encode each side apart).
An optional ``metrics() -> {name: float}`` (of its last ``loss`` call) is logged by the trainer as
``head/<name>/<metric>``.
"""

from torch import Tensor, nn

from mmtok.errors import MmtokError
from mmtok.model import MultimodalMaskedTransformer
from mmtok.plugins import PluginManager
from mmtok.train.config import HeadConfig, TrainConfig

__all__ = ["TrainModule", "apply_bundle", "build_heads", "head_metrics"]


class TrainModule(nn.Module):
    """The transformer plus its heads: what DDP wraps and what a checkpoint stores
    (``model.*`` and ``heads.<name>.*`` weights)."""

    def __init__(self, model: MultimodalMaskedTransformer, heads: dict[str, nn.Module]):
        super().__init__()
        self.model = model
        self.heads = nn.ModuleDict(heads)

    def forward(self, batch, masks, normalizer, head_weights: dict[str, float], token_weight=None):
        out = self.model(batch, masks, normalizer, token_weight)
        loss, head_losses = out.loss, {}
        for name, head in self.heads.items():
            h = (head.loss(out.features, batch, model=self.model) if getattr(head, "uses_model", False)
                 else head.loss(out.features, batch))
            head_losses[name] = h.detach()
            loss = loss + head_weights[name] * h
        return loss, out, head_losses


def build_heads(heads: dict[str, HeadConfig], model: MultimodalMaskedTransformer,
                manager: PluginManager) -> dict[str, nn.Module]:
    """Instantiate the configured heads for ``model``."""
    out = {}
    for name, hc in heads.items():
        if hc.head not in manager.names("heads"):
            raise MmtokError(f"heads.{name}: no head {hc.head!r} is installed; heads are {manager.names('heads')}")
        spec = manager.head(hc.head)
        try:
            out[name] = spec.factory(d_model=model.config.d_model, streams=model.streams, **hc.config)
        except TypeError as err:
            raise MmtokError(f"heads.{name}: cannot build {hc.head!r} with config {hc.config}: {err}") from None
        if not callable(getattr(out[name], "loss", None)):
            raise MmtokError(f"heads.{name}: {hc.head!r} has no loss(features, batch) method")
    return out


def apply_bundle(config: TrainConfig, manager: PluginManager) -> TrainConfig:
    """``config`` with its bundle's streams (unless set) and heads (added to its own)."""
    if config.bundle is None:
        return config
    bundle = manager.bundle(config.bundle)
    heads = dict(config.heads)
    for h in bundle.heads:
        heads.setdefault(h, HeadConfig(head=h))
    return config.model_copy(update={"streams": config.streams or list(bundle.streams), "heads": heads})


def head_metrics(heads: nn.ModuleDict) -> dict[str, float]:
    """``head/<name>/<metric>`` of every head that has ``metrics()``."""
    out = {}
    for name, head in heads.items():
        fn = getattr(head, "metrics", None)
        if callable(fn):
            for k, v in fn().items():
                out[f"head/{name}/{k}"] = float(v.item() if isinstance(v, Tensor) else v)
    return out

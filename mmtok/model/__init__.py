"""The shared multimodal masked transformer (4M-style) and its masking."""

from mmtok.model.config import MaskingConfig, ModelConfig, StreamBudget, StreamSpec
from mmtok.model.masking import MaskDraw, Masks, MaskSampler, StreamLayout
from mmtok.model.transformer import Features, ModelOutput, MultimodalMaskedTransformer

__all__ = ["Features", "MaskDraw", "MaskSampler", "Masks", "MaskingConfig", "ModelConfig", "ModelOutput",
           "MultimodalMaskedTransformer", "StreamBudget", "StreamLayout", "StreamSpec"]

"""The seed's guided SpectralGPT (one module per part): 3D patch layers and spectral attention,
the auxiliary-image conditioners, the masked encoder with gated cross-attention guidance, the MAE
decoder, the losses, and the whole pretraining model."""

from mmtok_plugin_hsi.model.conditioner import ConditionerOutput, ModalityConditioner, ProjectionHead
from mmtok_plugin_hsi.model.decoder import MAEDecoder
from mmtok_plugin_hsi.model.encoder import EncoderOutput, GuidedSpectralEncoder, MaskingPlan, random_masking
from mmtok_plugin_hsi.model.guided import AuxInput, GuidedSpectralGPT, GuidedSpectralGPTConfig, PretrainOutput
from mmtok_plugin_hsi.model.layers import (CrossAttentionBlock, SpatialSpectralPatchEmbed,
                                           SpatialSpectralPositionalEncoding, SpectralAttentionBlock, patchify,
                                           unpatchify)
from mmtok_plugin_hsi.model.losses import info_nce, masked_mse

__all__ = ["AuxInput", "ConditionerOutput", "CrossAttentionBlock", "EncoderOutput", "GuidedSpectralEncoder",
           "GuidedSpectralGPT", "GuidedSpectralGPTConfig", "MAEDecoder", "MaskingPlan", "ModalityConditioner",
           "PretrainOutput", "ProjectionHead", "SpatialSpectralPatchEmbed", "SpatialSpectralPositionalEncoding",
           "SpectralAttentionBlock", "info_nce", "masked_mse", "patchify", "random_masking", "unpatchify"]

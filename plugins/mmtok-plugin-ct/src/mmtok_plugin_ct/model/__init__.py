"""The seed's CT networks and losses (one module each): layers, the vision / report encoders and
aligner, the contrastive losses, and the ``ct-alignment`` head on mmtok's shared transformer."""

from mmtok_plugin_ct.model.encoder import (CTEncoderConfig, CTReportAligner, CTVisionEncoder, CTVisionOutput,
                                           EmbeddedReportEncoder, ProjectionHead, ReportTextEncoder, TextOutput)
from mmtok_plugin_ct.model.head import CTAlignmentHead
from mmtok_plugin_ct.model.layers import (AnatomicalStructureEncoder, AttentionPool, MultiScaleAggregation,
                                          MultiScaleFeatures, RegionAwareAttention, RegionEncoding,
                                          SliceAwareAttention, ThreeDPatchEmbedding, ThreeDTransformerBlock)
from mmtok_plugin_ct.model.losses import (AlignmentOutput, CrossModalContrastiveLoss, LogitScale,
                                          MultiLevelAlignmentLoss)

__all__ = ["CTEncoderConfig", "CTReportAligner", "CTVisionEncoder", "CTVisionOutput", "ProjectionHead",
           "ReportTextEncoder", "EmbeddedReportEncoder", "TextOutput", "CTAlignmentHead", "AnatomicalStructureEncoder", "AttentionPool",
           "MultiScaleAggregation", "MultiScaleFeatures", "RegionAwareAttention", "RegionEncoding",
           "SliceAwareAttention", "ThreeDPatchEmbedding", "ThreeDTransformerBlock", "AlignmentOutput",
           "CrossModalContrastiveLoss", "LogitScale", "MultiLevelAlignmentLoss"]

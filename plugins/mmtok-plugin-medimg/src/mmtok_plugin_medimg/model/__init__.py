"""The seed's models: the conditional VAE baseline (`ConditionalVAE`) and the disentangled
conditional VAE that separates imaging modalities (`DisentangledConditionalVAE`), their config,
layers, decoders (shared / modality heads / mixture of experts) and losses."""

from mmtok_plugin_medimg.model.base import CONFIG_FILE, WEIGHTS_FILE, MedImageVAE, VAEOutput, load_vae
from mmtok_plugin_medimg.model.config import ARCHITECTURE_FIELDS, VAEConfig
from mmtok_plugin_medimg.model.cvae import ConditionalVAE
from mmtok_plugin_medimg.model.decoders import (ConditionalDecoder, DecoderTrunk, ExpertMixture, ModalityHeads,
                                                SharedOutput)
from mmtok_plugin_medimg.model.disentangled import DisentangledConditionalVAE
from mmtok_plugin_medimg.model.layers import (ConvEncoder, DownBlock, GradientReversal, ModalityEmbedding, UpBlock,
                                              grad_reverse)
from mmtok_plugin_medimg.model.losses import (adversarial_loss, beta_tc_terms, gaussian_kl, modality_centroids,
                                              reconstruction_loss, separation_loss, supervised_contrastive_loss)

__all__ = ["ARCHITECTURE_FIELDS", "CONFIG_FILE", "ConditionalDecoder", "ConditionalVAE", "ConvEncoder",
           "DecoderTrunk", "DisentangledConditionalVAE", "DownBlock", "ExpertMixture", "GradientReversal",
           "MedImageVAE", "ModalityEmbedding", "ModalityHeads", "SharedOutput", "UpBlock", "VAEConfig", "VAEOutput",
           "WEIGHTS_FILE", "adversarial_loss", "beta_tc_terms", "gaussian_kl", "grad_reverse", "load_vae",
           "modality_centroids", "reconstruction_loss", "separation_loss", "supervised_contrastive_loss"]

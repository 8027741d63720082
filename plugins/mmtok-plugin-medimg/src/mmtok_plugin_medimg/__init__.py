"""mmtok-plugin-medimg: 2D medical images of many imaging modalities for mmtok.

`pip install mmtok-plugin-medimg` registers (entry point ``medimg``): the modality
`MedicalImage2D`; readers for DICOM (single / multi-frame, compressed), PNG / JPEG, TIFF / SVS
slide regions, NIfTI slices and MedMNIST archives; the codecs ``medical-image-fsq`` (patch tokens)
and ``medimg-vae-continuous`` / ``medimg-vae-fsq`` (the disentangled VAE's latent); the pretrained
``medimg/disentangled-vae-fsq``; the bundle ``medimg-modalities``; the command ``mmtok medimg``.
The seed's models (`ConditionalVAE`, `DisentangledConditionalVAE`) are in `mmtok_plugin_medimg.model`.
"""

from mmtok_plugin_medimg.codecs import MedicalImageCodec, MedicalImageCodecConfig, ModalityVAECodec, ModalityVAECodecConfig
from mmtok_plugin_medimg.modalities import (DICOM_MODALITY, IMAGING_MODALITIES, MedicalImage2D, modality_index,
                                            modality_label, register_imaging_modality)
from mmtok_plugin_medimg.preprocessing import harmonize_channels, load_image, prepare_record, resize, to_model_input
from mmtok_plugin_medimg.readers import read_dicom, read_image, read_medmnist, read_nifti_slice, read_slide

__all__ = ["MedicalImage2D", "IMAGING_MODALITIES", "DICOM_MODALITY", "modality_index", "modality_label",
           "register_imaging_modality", "MedicalImageCodec", "MedicalImageCodecConfig", "ModalityVAECodec",
           "ModalityVAECodecConfig", "prepare_record", "to_model_input", "harmonize_channels", "resize", "load_image",
           "read_dicom", "read_image", "read_slide", "read_nifti_slice", "read_medmnist"]

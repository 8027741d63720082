"""What mmtok-plugin-medimg registers (entry point ``medimg`` in group ``mmtok``)."""

from pathlib import Path

from mmtok import BundleSpec, CodecSpec, PretrainedSpec, ReaderSpec, hookimpl

from mmtok_plugin_medimg.cli import COMMAND
from mmtok_plugin_medimg.codecs import MedicalImageCodec, ModalityVAECodec
from mmtok_plugin_medimg.modalities import MedicalImage2D
from mmtok_plugin_medimg.readers import read_dicom, read_image, read_medmnist, read_nifti_slice, read_slide

#: the shipped pretrained codecs (fitted by examples/medimg/fit_pretrained.py on the repo's real images)
PRETRAINED = Path(__file__).parent / "pretrained"
FSQ = {"kind": "fsq", "levels": [8, 5, 5, 5]}


@hookimpl
def mmtok_modalities():
    return [MedicalImage2D]


@hookimpl
def mmtok_codecs():
    return [
        CodecSpec("medical-image-fsq", "medical_image", MedicalImageCodec, {"quantizer": FSQ},
                  "2D medical image: grey / RGB to 3 channels, aspect kept, zero-padded to 64 x 64; one FSQ "
                  "token of 1000 per 8 x 8 px (64)"),
        CodecSpec("medimg-vae-continuous", "medical_image", ModalityVAECodec, {"quantizer": {"kind": "continuous"}},
                  "disentangled conditional VAE encoder: 2 continuous tokens of 8 (z_shared, z_modality)"),
        CodecSpec("medimg-vae-fsq", "medical_image", ModalityVAECodec,
                  {"quantizer": {"kind": "fsq", "levels": [8, 8, 8, 8]}},
                  "disentangled conditional VAE encoder: the 16-d latent as 4 FSQ tokens of 4096"),
    ]


@hookimpl
def mmtok_readers():
    # NIfTI slices and MedMNIST archives are read by name ("reader": "nifti-slice" / "medmnist"):
    # their suffixes belong to the CT plugin's volume reader and to mmtok's own .npz reader
    return [
        ReaderSpec("dicom-image", (".dcm", ".dicom"), read_dicom,
                   "DICOM image (pydicom; JPEG / JPEG 2000 / RLE through Pillow or pylibjpeg): stored pixels + "
                   "rescale, VOI window, photometric interpretation; option frame= of a multi-frame file"),
        ReaderSpec("image", (".png", ".jpg", ".jpeg", ".bmp"), read_image,
                   "PNG / JPEG / BMP (Pillow); options imaging_modality=, body_part=, pixel_spacing_mm="),
        ReaderSpec("slide", (".svs", ".tif", ".tiff"), read_slide,
                   "TIFF / Aperio SVS slide (tifffile): options level=, region=[row, col, height, width]"),
        ReaderSpec("nifti-slice", (), read_nifti_slice,
                   "one 2-D slice of a NIfTI volume (nibabel): options slice=, axis=, imaging_modality="),
        ReaderSpec("medmnist", (), read_medmnist,
                   "one image of a MedMNIST .npz (<split>_images): options split=, index=, imaging_modality="),
    ]


@hookimpl
def mmtok_pretrained():
    return [PretrainedSpec(f"medimg/{d.name}", d, "disentangled conditional VAE fitted on the plugin's real images")
            for d in sorted(PRETRAINED.glob("*")) if (d / "config.json").is_file()]


@hookimpl
def mmtok_bundles():
    return [BundleSpec("medimg-modalities", ("tok_medical_image", "tok_medimg_latent"), (),
                       "2D medical images of many imaging modalities: patch tokens and the disentangled VAE's "
                       "latent tokens (mmtok-plugin-medimg); the disentangled conditional VAE is the plugin's own "
                       "model")]


@hookimpl
def mmtok_commands():
    return [COMMAND]

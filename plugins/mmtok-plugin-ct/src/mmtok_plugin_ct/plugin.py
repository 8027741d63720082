"""What mmtok-plugin-ct registers (entry point ``ct`` in group ``mmtok``)."""

from pathlib import Path

from mmtok import BundleSpec, CodecSpec, HeadSpec, PretrainedSpec, ReaderSpec, SampleCheckSpec, hookimpl

from mmtok_plugin_ct.codecs import AnatomyMaskCodec, CTVolumeCodec
from mmtok_plugin_ct.modalities import AnatomyMask, CTVolume, ReportText, check_aligned
from mmtok_plugin_ct.report_embedding import ReportEmbeddingCodec
from mmtok_plugin_ct.readers import NIFTI_SUFFIXES, read_dicom_series, read_nifti, read_report
from mmtok_plugin_ct.text import ReportTextCodec

FSQ = {"kind": "fsq", "levels": [8, 5, 5, 5]}
#: the seed's input: 64 x 512 x 512 voxels; at 3 x 0.75 x 0.75 mm that is 192 x 384 x 384 mm
GEOMETRY = {"size": [64, 512, 512], "patch": [4, 16, 16], "spacing_mm": [3.0, 0.75, 0.75]}
PRETRAINED_DIR = Path(__file__).parent / "data" / "pretrained"

#: pretrained name -> (directory under data/pretrained/, description); written by
#: scripts/fit_pretrained.py (byte-reproducible), measured in each directory's metrics.json.
#: anatomy-mask-regions has no state (the geometry is the codec): only its config ships (with an
#: empty model.safetensors), because `mmtok encode` requires a checkpoint for every stream.
PRETRAINED = {
    "ct/abdomen-ct-fsq": (
        "abdomen-ct-fsq", "ct-volume-fsq (hidden 32) at 32x224x224, 3x1.5x1.5 mm (1568 tokens of 1000): "
        "fitted 500 steps on 5974 real 8x64x64 crops of a TotalSegmentator abdominal CT (slices 0-21); "
        "held out: its slices 22-29 and another patient's DICOM series (examples/ct)"),
    "ct/abdomen-report-words": (
        "abdomen-report-words", "report-words, vocabulary 256 (70 words used), 112 tokens: fitted on the "
        "templated findings reports of the same 5974 training crops (no real radiology reports exist)"),
    "ct/abdomen-mask-regions": (
        "abdomen-mask-regions", "anatomy-mask-regions at the same 32x224x224, 3x1.5x1.5 mm geometry (1568 "
        "tokens of 20): stateless, nothing fitted; shipped so a registry stream can name it as checkpoint"),
}


@hookimpl
def mmtok_modalities():
    return [CTVolume, AnatomyMask, ReportText]


@hookimpl
def mmtok_codecs():
    return [
        CodecSpec("ct-volume-fsq", "ct_volume", CTVolumeCodec, {**GEOMETRY, "window": "soft_tissue", "quantizer": FSQ},
                  "CT: resample to 3x0.75x0.75 mm, crop/pad to 64x512x512, soft-tissue window; one FSQ "
                  "token of 1000 per 4x16x16 patch (16384)"),
        CodecSpec("ct-volume-continuous", "ct_volume", CTVolumeCodec,
                  {**GEOMETRY, "window": "soft_tissue", "quantizer": {"kind": "continuous"}},
                  "as ct-volume-fsq, continuous 8-d latent per patch"),
        CodecSpec("anatomy-mask-regions", "anatomy_mask", AnatomyMaskCodec, dict(GEOMETRY),
                  "dominant region group (of 20) per 4x16x16 patch, same grid as ct-volume-fsq"),
        CodecSpec("anatomy-mask-composition", "anatomy_mask", AnatomyMaskCodec,
                  {**GEOMETRY, "output": "composition"},
                  "fraction of each of the 20 region groups per 4x16x16 patch (continuous)"),
        CodecSpec("report-words", "report_text", ReportTextCodec, {"vocab_size": 512, "num_tokens": 64},
                  "word-level vocabulary fitted on the reports; 64 tokens, lines separated by <sep>"),
        CodecSpec("report-wordllama", "report_text", ReportEmbeddingCodec, {"num_tokens": 8, "dim": 256},
                  "frozen pretrained WordLlama (offline, extra [text]): one 256-d unit token per line "
                  "(impression + 7 findings); decodes by retrieval of the nearest known line"),
    ]


@hookimpl
def mmtok_pretrained():
    return [PretrainedSpec(name, PRETRAINED_DIR / directory, description)
            for name, (directory, description) in PRETRAINED.items()]


@hookimpl
def mmtok_readers():
    return [
        ReaderSpec("nifti", NIFTI_SUFFIXES, read_nifti,
                   "NIfTI volume (nibabel), reoriented to the canonical SAR layout with spacing"),
        ReaderSpec("dicom", (".dcmdir",), read_dicom_series,
                   "folder of one DICOM CT series (pydicom): sorted by position, rescaled to HU",
                   directory=True),
        ReaderSpec("report-text", (".txt",), read_report, "UTF-8 report: impression, then one finding per line"),
    ]


def _ct_alignment_head(**config):
    # the seed's networks load only when a run builds the head, not whenever plugins are listed
    from mmtok_plugin_ct.model.head import CTAlignmentHead

    return CTAlignmentHead(**config)


@hookimpl
def mmtok_heads():
    return [HeadSpec("ct-alignment", _ct_alignment_head,
                     "CT volume + mask streams <-> report stream, bidirectional InfoNCE on the shared "
                     "transformer's features")]


@hookimpl
def mmtok_bundles():
    return [BundleSpec("ct-encoder", ("tok_ct_volume", "tok_anatomy_mask", "tok_report"), ("ct-alignment",),
                       "3D CT volumes, anatomy masks and reports, aligned contrastively")]


def _aligned(modalities):
    check_aligned(modalities["ct_volume"], modalities["anatomy_mask"])


@hookimpl
def mmtok_sample_checks():
    return [SampleCheckSpec("ct-mask-on-volume-grid", ("ct_volume", "anatomy_mask"), _aligned,
                            "an anatomy mask must lie on its CT volume's voxel grid")]

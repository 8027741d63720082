"""What mmtok-plugin-nir registers (entry point ``nir`` in group ``mmtok``)."""

from pathlib import Path

from mmtok import BundleSpec, CodecSpec, PretrainedSpec, ScalarCodec, hookimpl

from mmtok_plugin_nir.cli import COMMAND
from mmtok_plugin_nir.codecs import NIRSpectrumCodec, SpectralFMCodec
from mmtok_plugin_nir.modalities import NIRSpectrum, PropertyTargets

#: the card's input: 2048 points after cubic resampling, SNV; one token per 16 channels
SPECTRUM = {"channels": 1, "size": [2048], "patch": [16], "field": "values"}
#: SpectralFM tokens: the 128 patch tokens of the default SpectralFM in groups of 8, + z_chem -> 17
#: the SpectralFM tokens: the cpu-size model `mmtok nir pretrain` trains (patch 32: 64 patches), 4 patches per token
SPECTRALFM = {"pool": 4, "z_chem_token": True}
#: the streams of the nir-calibration bundle (registry.yaml declares the same)
CALIBRATION_STREAMS = ("tok_nir_spectralfm", "tok_nir_properties")

PRETRAINED_DIR = Path(__file__).parent / "data" / "pretrained"
#: pretrained name -> (folder under data/pretrained/, description); fitted by scripts/fit_pretrained.py
PRETRAINED = {
    "nir/corn-tablet-spectrum-fsq": (
        "corn-tablet-spectrum-fsq", "nir-spectrum-fsq fitted on Corn (180 spectra) + Tablet (390) calibration rows"),
    "nir/corn-properties-quantile": (
        "corn-properties-quantile", "nir-properties-quantile on the Corn calibration pool (60 samples, 4 properties)"),
}


@hookimpl
def mmtok_modalities():
    return [NIRSpectrum, PropertyTargets]


@hookimpl
def mmtok_codecs():
    return [
        CodecSpec("nir-spectrum-fsq", "nir_spectrum", NIRSpectrumCodec,
                  {**SPECTRUM, "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}},
                  "NIR spectrum, any axis: cubic resampling to 2048 points + SNV; one FSQ token of 1000 "
                  "per 16 channels (128)"),
        CodecSpec("nir-spectrum-continuous", "nir_spectrum", NIRSpectrumCodec,
                  {**SPECTRUM, "quantizer": {"kind": "continuous"}},
                  "as nir-spectrum-fsq, continuous 8-d latent per 16 channels"),
        CodecSpec("nir-spectralfm-tokens", "nir_spectrum", SpectralFMCodec, SPECTRALFM,
                  "NIR spectrum, any axis: cubic resampling + SNV -> a frozen pretrained SpectralFM "
                  "(config.checkpoint: its run directory) -> 16 continuous tokens (patch tokens after its "
                  "transformer, 4 patches of 32 channels each) + the posterior mean of z_chem, standardised"),
        CodecSpec("nir-properties-quantile", "nir_properties", ScalarCodec, {"columns": 4, "num_bins": 64},
                  "lab reference values (4 columns, e.g. corn moisture / oil / protein / starch): one "
                  "quantile-bin token each"),
    ]


@hookimpl
def mmtok_bundles():
    return [BundleSpec("nir-calibration", CALIBRATION_STREAMS, (),
                       "NIR spectra as frozen SpectralFM tokens and their lab reference values: the shared "
                       "transformer imputes the property stream (mmtok_plugin_nir.shared_model)")]


@hookimpl
def mmtok_pretrained():
    return [PretrainedSpec(name, PRETRAINED_DIR / folder, description)
            for name, (folder, description) in PRETRAINED.items()]


@hookimpl
def mmtok_commands():
    return [COMMAND]

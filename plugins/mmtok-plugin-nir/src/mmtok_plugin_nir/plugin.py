"""What mmtok-plugin-nir registers (entry point ``nir`` in group ``mmtok``)."""

from mmtok import BundleSpec, CodecSpec, ScalarCodec, hookimpl

from mmtok_plugin_nir.cli import COMMAND
from mmtok_plugin_nir.codecs import NIRSpectrumCodec
from mmtok_plugin_nir.modalities import NIRSpectrum, PropertyTargets

#: the card's input: 2048 points after cubic resampling, SNV; one token per 16 channels
SPECTRUM = {"channels": 1, "size": [2048], "patch": [16], "field": "values"}


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
        CodecSpec("nir-properties-quantile", "nir_properties", ScalarCodec, {"columns": 4, "num_bins": 64},
                  "lab reference values (4 columns, e.g. corn moisture / oil / protein / starch): one "
                  "quantile-bin token each"),
    ]


@hookimpl
def mmtok_bundles():
    return [BundleSpec("nir-calibration", ("tok_nir_spectrum", "tok_nir_properties"), (),
                       "NIR spectra and their lab reference values; SpectralFM is the plugin's own model")]


@hookimpl
def mmtok_commands():
    return [COMMAND]

"""What mmtok-plugin-astro registers (entry point ``astro`` in group ``mmtok``)."""

from mmtok import CodecSpec, ReaderSpec, ScalarCodec, hookimpl

from mmtok_plugin_astro.codecs import SurveyImageCodec
from mmtok_plugin_astro.modalities import GaiaPhotometry, HSCImage, LegacySurveyImage, SourceCatalog
from mmtok_plugin_astro.readers import FITS_SUFFIXES, read_fits

FSQ = {"kind": "fsq", "levels": [8, 5, 5, 5]}


@hookimpl
def mmtok_modalities():
    return [HSCImage, LegacySurveyImage, GaiaPhotometry, SourceCatalog]


@hookimpl
def mmtok_codecs():
    return [
        CodecSpec("hsc-image-fsq", "hsc_image", SurveyImageCodec,
                  {"channels": 5, "size": [48, 48], "patch": [8, 8], "norm": "arcsinh",
                   "quantizer": FSQ},
                  "HSC grizy 48x48 cutouts: nanomaggies, arcsinh, one FSQ token of 1000 per 8x8 patch (36)"),
        CodecSpec("legacy-image-fsq", "legacy_survey_image", SurveyImageCodec,
                  {"channels": 4, "size": [32, 32], "patch": [8, 8], "norm": "arcsinh",
                   "quantizer": FSQ},
                  "Legacy Survey griz 32x32 cutouts: arcsinh, one FSQ token of 1000 per 8x8 patch (16)"),
        CodecSpec("gaia-photometry-quantile", "gaia_photometry", ScalarCodec,
                  {"columns": 3, "num_bins": 64},
                  "Gaia G, BP, RP mean magnitudes: one quantile-bin token of 64 each"),
        CodecSpec("source-catalog-quantile", "source_catalog", ScalarCodec,
                  {"columns": 6, "num_bins": 64},
                  "catalogue x, y, flux, a, b, theta: one quantile-bin token of 64 each"),
    ]


@hookimpl
def mmtok_readers():
    return [ReaderSpec("fits", FITS_SUFFIXES, read_fits,
                       "FITS image (astropy): 'flux' float32, 'pixel_scale_arcsec' from the WCS")]

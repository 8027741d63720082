"""What mmtok-plugin-astro registers (entry point ``astro`` in group ``mmtok``)."""

from pathlib import Path

from mmtok import CodecSpec, PretrainedSpec, ReaderSpec, ScalarCodec, hookimpl

from mmtok_plugin_astro.codecs import SurveyImageCodec
from mmtok_plugin_astro.modalities import (GaiaAstrometry, GaiaPhotometry, HSCImage,
                                           LegacySurveyImage, SourceCatalog)
from mmtok_plugin_astro.readers import FITS_SUFFIXES, read_fits

FSQ = {"kind": "fsq", "levels": [8, 5, 5, 5]}
PRETRAINED_DIR = Path(__file__).parent / "data" / "pretrained"

#: pretrained name -> (directory under data/pretrained/, description); written by
#: scripts/fit_pretrained.py (byte-reproducible), measured in each directory's metrics.json
PRETRAINED = {
    "astro/hsc-cosmos-fsq24": (
        "hsc-cosmos-fsq24", "hsc-image-fsq 24x24 (crop: center): fitted on 8 real HSC COSMOS crops "
        "(hsc_cosmos_35 + cut_hsc), held out: the 6 crops of hsc_cosmos"),
    "astro/hsc-cosmos-catalog": (
        "hsc-cosmos-catalog", "source-catalog-quantile, 4 bins: fitted on the 6 SEP rows of "
        "hsc_cosmos (no held-out rows exist)"),
    "astro/gaia-cone-photometry": (
        "gaia-cone-photometry", "gaia-photometry-quantile, 8 bins: fitted on 40 real Gaia DR3 "
        "sources, 10 held out"),
    "astro/gaia-cone-astrometry": (
        "gaia-cone-astrometry", "gaia-astrometry-quantile, 8 bins: fitted on 34 real Gaia DR3 "
        "sources with parallax, 10 held out"),
}


@hookimpl
def mmtok_modalities():
    return [HSCImage, LegacySurveyImage, GaiaPhotometry, GaiaAstrometry, SourceCatalog]


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
        CodecSpec("gaia-astrometry-quantile", "gaia_astrometry", ScalarCodec,
                  {"columns": 3, "num_bins": 64},
                  "Gaia parallax, pmra, pmdec: one quantile-bin token of 64 each"),
        CodecSpec("source-catalog-quantile", "source_catalog", ScalarCodec,
                  {"columns": 6, "num_bins": 64},
                  "catalogue x, y, flux, a, b, theta: one quantile-bin token of 64 each"),
    ]


@hookimpl
def mmtok_readers():
    return [ReaderSpec("fits", FITS_SUFFIXES, read_fits,
                       "FITS image (astropy): 'flux' float32, 'pixel_scale_arcsec' from the WCS")]


@hookimpl
def mmtok_pretrained():
    return [PretrainedSpec(name, PRETRAINED_DIR / directory, description)
            for name, (directory, description) in PRETRAINED.items()]

"""mmtok plugin for astronomy: HSC and Legacy Survey images, Gaia photometry, source catalogues,
a FITS reader, survey zero points and pixel-scale alignment, and the real HSC cutouts of
scarlet's test data."""

from mmtok_plugin_astro.codecs import SurveyImageCodec
from mmtok_plugin_astro.datasets import (DATA_DIR, HSC_CUTOUTS, HST_FITS, center_crop,
                                         load_hsc_batch, load_hsc_catalog, load_hsc_cutouts,
                                         read_cutout)
from mmtok_plugin_astro.modalities import GaiaPhotometry, HSCImage, LegacySurveyImage, SourceCatalog
from mmtok_plugin_astro.preprocessing import (SurveyAligner, from_nanomaggies, nanomaggies_per_unit,
                                              to_nanomaggies)
from mmtok_plugin_astro.readers import read_fits

__version__ = "0.1.0"
__all__ = ["HSCImage", "LegacySurveyImage", "GaiaPhotometry", "SourceCatalog", "SurveyImageCodec",
           "SurveyAligner", "nanomaggies_per_unit", "to_nanomaggies", "from_nanomaggies",
           "read_fits", "read_cutout", "center_crop", "load_hsc_cutouts", "load_hsc_batch",
           "load_hsc_catalog", "DATA_DIR", "HSC_CUTOUTS", "HST_FITS"]

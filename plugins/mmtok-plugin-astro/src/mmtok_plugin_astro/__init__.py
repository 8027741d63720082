"""mmtok plugin for astronomy: HSC and Legacy Survey images, Gaia photometry, source catalogues,
a FITS reader, survey zero points and pixel-scale alignment, the real HSC cutouts of
scarlet's test data, 50 real Gaia DR3 sources, and pretrained codecs fitted on them."""

from mmtok_plugin_astro.codecs import SurveyImageCodec
from mmtok_plugin_astro.datasets import (DATA_DIR, GAIA_CSV, HSC_CUTOUTS, HST_FITS, center_crop,
                                         gaia_split, hsc_source_crops, load_gaia, load_hsc_batch,
                                         load_hsc_catalog, load_hsc_cutouts, read_cutout,
                                         read_gaia_catalog)
from mmtok_plugin_astro.modalities import (GaiaAstrometry, GaiaPhotometry, HSCImage,
                                           LegacySurveyImage, SourceCatalog)
from mmtok_plugin_astro.preprocessing import (SurveyAligner, from_nanomaggies, nanomaggies_per_unit,
                                              to_nanomaggies)
from mmtok_plugin_astro.readers import read_fits

__version__ = "0.1.0"
__all__ = ["HSCImage", "LegacySurveyImage", "GaiaPhotometry", "GaiaAstrometry", "SourceCatalog",
           "SurveyImageCodec",
           "SurveyAligner", "nanomaggies_per_unit", "to_nanomaggies", "from_nanomaggies",
           "read_fits", "read_cutout", "center_crop", "load_hsc_cutouts", "load_hsc_batch",
           "load_hsc_catalog", "hsc_source_crops", "read_gaia_catalog", "gaia_split", "load_gaia",
           "DATA_DIR", "HSC_CUTOUTS", "HST_FITS", "GAIA_CSV"]

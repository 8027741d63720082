"""mmtok-plugin-hsi: hyperspectral cubes and their co-registered auxiliary images for mmtok.

`pip install mmtok-plugin-hsi` registers (entry point ``hsi``): the modalities `HSICube`,
`InfraredImage`, `AutofluorescenceImage`, `ThicknessMap`, `ElevationMap`; readers for MATLAB
``.mat`` (v5 / v7.3) and ENVI; the codecs ``hsi-cube-fsq`` / ``hsi-cube-continuous`` /
``hsi-pixel-fsq`` and one image codec per auxiliary; the head ``hsi-guidance`` and the bundle
``hsi-guided``. The seed's guided SpectralGPT is usable standalone from `mmtok_plugin_hsi.model`.
"""

from mmtok_plugin_hsi.codecs import HSICubeCodec, HSICubeCodecConfig
from mmtok_plugin_hsi.modalities import (AUXILIARIES, AutofluorescenceImage, AuxiliaryImage, ElevationMap, HSICube,
                                         InfraredImage, ThicknessMap, check_coregistered)
from mmtok_plugin_hsi.preprocessing import coverage_problem, resample_bands, uniform_grid
from mmtok_plugin_hsi.readers import read_envi, read_mat, write_envi

__all__ = ["HSICube", "AuxiliaryImage", "InfraredImage", "AutofluorescenceImage", "ThicknessMap", "ElevationMap",
           "AUXILIARIES", "check_coregistered", "HSICubeCodec", "HSICubeCodecConfig", "resample_bands",
           "uniform_grid", "coverage_problem", "read_mat", "read_envi", "write_envi"]

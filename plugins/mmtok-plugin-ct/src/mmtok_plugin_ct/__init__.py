"""mmtok-plugin-ct: 3D CT volumes, anatomy masks and report text for mmtok.

`pip install mmtok-plugin-ct` registers (entry point ``ct``): the modalities `CTVolume`,
`AnatomyMask`, `ReportText`; readers for NIfTI, DICOM series and report text; the codecs
``ct-volume-fsq`` / ``ct-volume-continuous``, ``anatomy-mask-regions`` /
``anatomy-mask-composition``, ``report-words``; the head ``ct-alignment`` and the bundle
``ct-encoder``. The CT encoder of the seed (`CTVisionEncoder`, `CTReportAligner`) is usable
standalone from `mmtok_plugin_ct.model`.
"""

from mmtok_plugin_ct.codecs import AnatomyMaskCodec, CTVolumeCodec
from mmtok_plugin_ct.modalities import AnatomyMask, CTVolume, ReportText, check_aligned
from mmtok_plugin_ct.orientation import OrientationError
from mmtok_plugin_ct.preprocessing import WINDOWS, CTPreprocessConfig, preprocess_mask, preprocess_volume
from mmtok_plugin_ct.readers import DicomError, read_dicom_series, read_nifti, read_report
from mmtok_plugin_ct.regions import NUM_REGIONS, REGION_GROUPS, group_labels
from mmtok_plugin_ct.text import ReportTextCodec

__all__ = ["CTVolume", "AnatomyMask", "ReportText", "check_aligned", "CTVolumeCodec", "AnatomyMaskCodec",
           "ReportTextCodec", "CTPreprocessConfig", "WINDOWS", "preprocess_volume", "preprocess_mask",
           "read_nifti", "read_dicom_series", "read_report", "OrientationError", "DicomError",
           "REGION_GROUPS", "NUM_REGIONS", "group_labels"]

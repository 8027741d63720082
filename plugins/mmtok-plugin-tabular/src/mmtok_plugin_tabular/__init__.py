"""mmtok plugin for tables: the diabetes study's demographics / vitals / labs (with pretrained
codecs), generic CSV tables, time series, and ECG records (WFDB reader, beat segmentation, beat
modalities and codecs)."""

from mmtok_plugin_tabular.datasets import TRAIN_SIZE, Diabetes, load_diabetes
from mmtok_plugin_tabular.modalities import (AAMI_CLASSES, BeatClass, EcgBeat, LabResults, PatientDemographics,
                                             Table, TimeSeries, VitalSigns, aami_class)
from mmtok_plugin_tabular.readers import (WfdbError, WfdbRecord, read_annotations, read_wfdb,
                                          read_wfdb_record)
from mmtok_plugin_tabular.segmentation import SegmentationError, beat_windows, sliding_windows

__version__ = "0.1.0"
__all__ = ["PatientDemographics", "VitalSigns", "LabResults", "Table", "TimeSeries", "EcgBeat", "BeatClass",
           "AAMI_CLASSES", "aami_class", "Diabetes", "load_diabetes", "TRAIN_SIZE",
           "WfdbError", "WfdbRecord", "read_wfdb", "read_wfdb_record", "read_annotations",
           "SegmentationError", "beat_windows", "sliding_windows"]

"""mmtok plugin for tables: the diabetes study's demographics / vitals / labs (with pretrained
codecs), generic CSV tables and time series."""

from mmtok_plugin_tabular.datasets import TRAIN_SIZE, Diabetes, load_diabetes
from mmtok_plugin_tabular.modalities import (LabResults, PatientDemographics, Table, TimeSeries,
                                             VitalSigns)

__version__ = "0.1.0"
__all__ = ["PatientDemographics", "VitalSigns", "LabResults", "Table", "TimeSeries",
           "Diabetes", "load_diabetes", "TRAIN_SIZE"]

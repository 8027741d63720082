"""What mmtok-plugin-tabular registers (entry point ``tabular`` in group ``mmtok``)."""

from pathlib import Path

from mmtok import (CategoricalCodec, CodecSpec, PretrainedSpec, ReaderSpec, ScalarCodec, TableCodec, TimeSeriesCodec,
                   hookimpl)

from mmtok_plugin_tabular.modalities import (BeatClass, EcgBeat, LabResults, PatientDemographics, Table,
                                             VitalSigns)
from mmtok_plugin_tabular.readers import WFDB_SUFFIXES, read_wfdb

PRETRAINED_DIR = Path(__file__).parent / "data" / "pretrained"

#: pretrained name -> (directory under data/pretrained/, description)
PRETRAINED = {
    "tabular/diabetes-demographics-fsq": (
        "diabetes-demographics-fsq", "demographics-fsq fitted on the diabetes study (342 patients)"),
    "tabular/diabetes-vitals-quantile": (
        "diabetes-vitals-quantile", "vitals-quantile fitted on the diabetes study (342 patients)"),
    "tabular/diabetes-labs-fsq": (
        "diabetes-labs-fsq", "labs-fsq fitted on the diabetes study (342 patients)"),
}


@hookimpl
def mmtok_modalities():
    return [PatientDemographics, VitalSigns, LabResults, Table, EcgBeat, BeatClass]


@hookimpl
def mmtok_codecs():
    return [
        CodecSpec("demographics-fsq", "patient_demographics", TableCodec,
                  {"columns": 3, "num_tokens": 2, "latent_dim": 4,
                   "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}},
                  "age, sex, bmi jointly: MLP + FSQ, 2 tokens of 1000"),
        CodecSpec("vitals-quantile", "vital_signs", ScalarCodec,
                  {"columns": 1, "num_bins": 64},
                  "blood pressure: one quantile-bin token of 64"),
        CodecSpec("labs-fsq", "lab_results", TableCodec,
                  {"columns": 6, "num_tokens": 3, "latent_dim": 4,
                   "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}},
                  "six serum measurements jointly: MLP + FSQ, 3 tokens of 1000"),
        CodecSpec("demographics-quantile", "patient_demographics", ScalarCodec,
                  {"columns": 3, "num_bins": 16},
                  "age, sex, bmi: one quantile-bin token of 16 per column (AION's catalog tokens)"),
        CodecSpec("labs-quantile", "lab_results", ScalarCodec,
                  {"columns": 6, "num_bins": 16},
                  "six serum measurements: one quantile-bin token of 16 per column"),
        CodecSpec("table-quantile", "table", ScalarCodec,
                  {"columns": 4, "num_bins": 64},
                  "generic table: one quantile-bin token of 64 per column (set `columns`)"),
        CodecSpec("timeseries-fsq", "time_series", TimeSeriesCodec,
                  {"channels": 1, "size": [64], "patch": [8],
                   "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}},
                  "time series: one FSQ token of 1000 per 8 steps"),
        CodecSpec("ecg-beat-fsq", "ecg_beat", TimeSeriesCodec,
                  {"channels": 1, "size": [256], "patch": [16], "length": "resample",
                   "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}},
                  "an ECG beat window resampled to 256 steps: one FSQ token of 1000 per 16 steps"),
        CodecSpec("beat-class", "beat_class", CategoricalCodec, {"columns": 1, "num_categories": 5},
                  "a beat's AAMI class (N, S, V, F, Q): one exact token of 5"),
    ]


@hookimpl
def mmtok_readers():
    return [ReaderSpec("wfdb", WFDB_SUFFIXES, read_wfdb,
                       "WFDB record (.hea + .dat, PhysioNet): values (c, t) in physical units, sample_rate; "
                       "options channels, start, stop")]


@hookimpl
def mmtok_pretrained():
    return [PretrainedSpec(name, PRETRAINED_DIR / directory, description)
            for name, (directory, description) in PRETRAINED.items()]

"""The shipped diabetes data and the pretrained codecs fitted on it."""

import json
import socket

import numpy as np
import pytest
import torch
from sklearn import datasets as sklearn_datasets

import mmtok
from mmtok import ModalityError
from mmtok.fit import evaluate_codec
from mmtok.readers import read_csv
from mmtok_plugin_tabular import (TRAIN_SIZE, LabResults, PatientDemographics, Table, TimeSeries,
                                  VitalSigns, load_diabetes)
from mmtok_plugin_tabular.datasets import DIABETES_COLUMNS, DIABETES_CSV, read_diabetes_columns

#: held-out (last 100 patients) nRMSE measured by scripts/fit_pretrained.py, with margin
#: (measured: demographics 0.102, vitals 0.028, labs 0.136)
MAX_NRMSE = {"tabular/diabetes-demographics-fsq": ("demographics", 0.15),
             "tabular/diabetes-vitals-quantile": ("vitals", 0.05),
             "tabular/diabetes-labs-fsq": ("labs", 0.20)}


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_csv_matches_sklearn_exactly():
    d = sklearn_datasets.load_diabetes(scaled=False)
    cols = read_diabetes_columns()
    assert tuple(cols) == DIABETES_COLUMNS == (*d.feature_names, "target")
    shipped = np.column_stack([cols[c] for c in DIABETES_COLUMNS])
    np.testing.assert_array_equal(shipped, np.column_stack([d.data, d.target]))


def test_load_diabetes_splits():
    full, train, test = load_diabetes(), load_diabetes("train"), load_diabetes("test")
    assert (len(full.demographics), len(train.labs), len(test.vitals)) == (442, TRAIN_SIZE, 100)
    assert full.labs.values.shape == (442, 6) and full.vitals.values.shape == (442, 1)
    assert full.target.shape == (442,)
    assert torch.equal(full.labs.values[TRAIN_SIZE:], test.labs.values)
    # first patient of the study: age 59, sex 2, bmi 32.1, bp 101, target 151
    assert full.demographics.values[0].tolist() == pytest.approx([59, 2, 32.1])
    assert full.vitals.values[0, 0] == 101 and full.target[0] == 151
    with pytest.raises(ModalityError, match="split"):
        load_diabetes("validation")


@pytest.mark.parametrize("name", sorted(MAX_NRMSE))
def test_pretrained_loads_offline_and_reconstructs_held_out(name, offline):
    field, limit = MAX_NRMSE[name]
    codec = mmtok.get_plugin_manager().load_pretrained(name)  # verifies the fingerprint too
    test = getattr(load_diabetes("test"), field)
    stream = codec.encode(test)
    assert stream.ids.shape == (100, codec.num_tokens)
    decoded = codec.decode(stream)
    assert decoded.values.shape == test.values.shape
    report = evaluate_codec(codec, test)
    assert report.nrmse < limit, report.summary()
    # the shipped metrics.json (and README table) are what this checkpoint gives
    metrics = json.loads((mmtok.get_plugin_manager().pretrained(name).path / "metrics.json").read_text())
    assert metrics["fingerprint"] == codec.fingerprint()
    assert report.nrmse == pytest.approx(metrics["test"]["nrmse"], abs=1e-4)


def test_registry_resolves_pretrained_checkpoint(tmp_path):
    (tmp_path / "registry.yaml").write_text(
        "streams:\n"
        "  tok_labs:\n"
        "    modality: lab_results\n"
        "    codec: labs-fsq\n"
        "    vocab_size: 1000\n"
        "    num_tokens: 3\n"
        "    checkpoint: tabular/diabetes-labs-fsq\n")
    registry = mmtok.Registry.load(tmp_path / "registry.yaml")
    assert registry.check() == []
    assert registry.codec("tok_labs").name == "labs-fsq"


def test_from_frame_names_missing_columns():
    rows = read_diabetes_columns()
    del rows["s3"], rows["s5"]
    with pytest.raises(ModalityError, match=r"LabResults\.from_frame: missing column\(s\) \['s3', 's5'\]"):
        LabResults.from_frame(rows)
    with pytest.raises(ModalityError, match=r"PatientDemographics\.from_frame: missing column\(s\) \['sex'\]"):
        PatientDemographics.from_frame({"age": [50.0], "bmi": [25.0]})
    with pytest.raises(ModalityError, match="Table.from_frame: missing"):
        Table.from_frame(rows, columns=["s1", "s3"])
    with pytest.raises(ModalityError, match="column 'bp' must be numeric"):
        VitalSigns.from_frame({"bp": np.array(["high", "low"])})


def test_from_frame_round_trip():
    rows = {"bp": np.array([90.0, 101.0]), "other": np.array([1, 2])}
    vitals = VitalSigns.from_frame(rows)
    assert vitals.values.tolist() == [[90.0], [101.0]]
    assert vitals.to_frame()["bp"].tolist() == [90.0, 101.0]


def test_table_from_core_csv_reader():
    table = Table.from_frame(read_csv(DIABETES_CSV))
    assert table.values.shape == (442, 11) and table.columns == DIABETES_COLUMNS
    sub = Table.from_frame(read_csv(DIABETES_CSV), columns=["bmi", "bp"])
    assert sub.values.shape == (442, 2) and sub.columns == ("bmi", "bp")
    with pytest.raises(ModalityError, match="Table.values has 2 columns but Table.columns names 3"):
        Table(values=torch.zeros(4, 2), columns=("a", "b", "c"))


def test_time_series_from_frame():
    rows = {"t": np.arange(64.0), "hr": np.sin(np.arange(64.0)), "spo2": np.ones(64)}
    ts = TimeSeries.from_frame(rows, channels=["hr", "spo2"], time="t")
    assert ts.values.shape == (1, 2, 64) and ts.time.shape == (1, 64)
    assert ts.values[0, 1].eq(1).all() and ts.time[0, -1] == 63
    with pytest.raises(ModalityError, match=r"missing column\(s\) \['ecg'\]"):
        TimeSeries.from_frame(rows, channels=["ecg"])

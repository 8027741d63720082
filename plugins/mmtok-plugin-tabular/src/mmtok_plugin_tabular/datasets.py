"""The diabetes study (Efron et al. 2004), shipped as ``data/diabetes.csv`` (see data/DATA.md).

442 patients; raw (unscaled) baseline variables and the disease progression one year later.
Reading it needs neither scikit-learn nor network access.
"""

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from mmtok import ModalityError, read_csv

from mmtok_plugin_tabular.modalities import LabResults, PatientDemographics, VitalSigns

__all__ = ["DIABETES_CSV", "DIABETES_COLUMNS", "TRAIN_SIZE", "Diabetes", "load_diabetes",
           "read_diabetes_columns"]

DIABETES_CSV = Path(__file__).parent / "data" / "diabetes.csv"
DIABETES_COLUMNS = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "target")
#: the fixed split of the pretrained codecs: the first 342 patients train, the last 100 are held out
TRAIN_SIZE = 342


class Diabetes(NamedTuple):
    """The study as modalities, all with the same b patients (rows in file order)."""

    demographics: PatientDemographics  # values (b, 3): age, sex, bmi
    vitals: VitalSigns  # values (b, 1): bp
    labs: LabResults  # values (b, 6): s1..s6
    target: Tensor  # (b,) float32: disease progression one year after baseline


def read_diabetes_columns() -> dict:
    """The shipped CSV as {column: float64 array (442,)}."""
    return read_csv(DIABETES_CSV)


def load_diabetes(split: str = "all") -> Diabetes:
    """Load the shipped diabetes study. ``split``: "all" (442 patients), "train" (first
    `TRAIN_SIZE` = 342) or "test" (last 100, held out from the pretrained codecs)."""
    slices = {"all": slice(None), "train": slice(None, TRAIN_SIZE), "test": slice(TRAIN_SIZE, None)}
    if split not in slices:
        raise ModalityError(f"load_diabetes: split must be one of {sorted(slices)}, found {split!r}")
    rows = {k: v[slices[split]] for k, v in read_diabetes_columns().items()}
    return Diabetes(
        demographics=PatientDemographics.from_frame(rows),
        vitals=VitalSigns.from_frame(rows),
        labs=LabResults.from_frame(rows),
        target=torch.as_tensor(rows["target"], dtype=torch.float32),
    )

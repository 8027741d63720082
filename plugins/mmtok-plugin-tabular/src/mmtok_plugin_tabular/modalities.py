"""Tabular modalities: the diabetes study's three tables, a generic CSV table, and ECG beats with
their classes (`TimeSeries`, once here, is mmtok's own `mmtok.TimeSeries`; re-exported for old
imports).

Do not add ``from __future__ import annotations`` here: it would turn the jaxtyping shape
annotations into strings and mmtok refuses such modalities.

Every tensor field is batched on axis 0 (``b``). Tables are `mmtok.modalities.Columns`:
``values: (b, c)`` with one column per named variable; ``from_frame`` builds a batch from named
columns (a dict of 1-D arrays, or a pandas DataFrame), ``to_frame`` goes back and ``from_record``
maps one manifest table row.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from mmtok import Columns, TimeSeries  # noqa: F401 - TimeSeries lives in mmtok now; re-exported
from mmtok import stack_columns as _stack_columns

__all__ = ["PatientDemographics", "VitalSigns", "LabResults", "Table", "TimeSeries", "EcgBeat", "BeatClass",
           "AAMI_CLASSES", "aami_class", "stack_columns"]


def stack_columns(owner: str, rows: Mapping[str, Any], columns: Sequence[str]) -> Tensor:
    """Named 1-D columns of equal length n -> float32 tensor (n, len(columns)).

    Raises `ModalityError` naming ``owner`` (as ``owner.from_frame``) and every missing,
    non-numeric or ragged column: `mmtok.stack_columns` with ``where=f"{owner}.from_frame"``.
    """
    return _stack_columns(rows, columns, where=f"{owner}.from_frame")


def _uniform(generator: torch.Generator | None, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


@dataclass(frozen=True, eq=False)
class PatientDemographics(Columns):
    """Baseline demographics of the diabetes study. values: (b, 3) = age, sex, bmi.

    age in years; sex coded 1 / 2 (which is which is not documented); bmi: body mass index
    (kg/m^2).
    """

    name: ClassVar[str] = "patient_demographics"
    columns: ClassVar[tuple[str, ...]] = ("age", "sex", "bmi")

    @classmethod
    def example(cls, batch_size: int = 2,
                generator: torch.Generator | None = None) -> "PatientDemographics":
        """Plausible random patients (the ranges of the study). values: (batch_size, 3)."""
        age = _uniform(generator, batch_size, 19, 79).round()
        sex = 1 + (torch.rand(batch_size, generator=generator) < 0.5).float()
        bmi = _uniform(generator, batch_size, 18, 42).mul(10).round().div(10)
        return cls(values=torch.stack([age, sex, bmi], dim=1))


@dataclass(frozen=True, eq=False)
class VitalSigns(Columns):
    """Vital signs. The diabetes study has one: bp, the average blood pressure (units not
    documented; mm Hg range, 62-133). values: (b, 1)."""

    name: ClassVar[str] = "vital_signs"
    columns: ClassVar[tuple[str, ...]] = ("bp",)

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "VitalSigns":
        """Plausible random blood pressures. values: (batch_size, 1)."""
        return cls(values=_uniform(generator, batch_size, 70, 120).round()[:, None])


@dataclass(frozen=True, eq=False)
class LabResults(Columns):
    """The six blood serum measurements of the diabetes study. values: (b, 6) = s1..s6:

    - s1 tc: total serum cholesterol
    - s2 ldl: low-density lipoproteins
    - s3 hdl: high-density lipoproteins
    - s4 tch: total cholesterol / HDL
    - s5 ltg: possibly log of serum triglycerides level
    - s6 glu: blood sugar level

    (meanings as documented with the data by scikit-learn; units are not documented.)
    """

    name: ClassVar[str] = "lab_results"
    columns: ClassVar[tuple[str, ...]] = ("s1", "s2", "s3", "s4", "s5", "s6")
    #: the documented meaning of each column, in order
    meanings: ClassVar[tuple[str, ...]] = ("tc", "ldl", "hdl", "tch", "ltg", "glu")

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "LabResults":
        """Plausible random panels (around the study's means). values: (batch_size, 6)."""
        mean = torch.tensor([189.0, 115.0, 50.0, 4.0, 4.6, 91.0])
        std = torch.tensor([34.0, 30.0, 13.0, 1.3, 0.5, 11.0])
        z = torch.randn(batch_size, 6, generator=generator).clamp(-2.5, 2.5)
        return cls(values=mean + std * z)


@dataclass(frozen=True, eq=False)
class Table(Columns):
    """A generic numeric table (e.g. a CSV file). values: (b, c); ``columns`` optionally names
    the c columns (not batched: the same for every row). ``from_frame(rows, columns=None)``
    takes every numeric column by default; ``to_frame`` calls unnamed columns c0, c1, ..."""

    name: ClassVar[str] = "table"
    names_field: ClassVar[str | None] = "columns"
    columns: tuple[str, ...] = ()

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "Table":
        """Random rows of 4 named columns (fits the default ``table-quantile`` codec)."""
        return cls(values=torch.randn(batch_size, 4, generator=generator),
                   columns=("x0", "x1", "x2", "x3"))


@dataclass(frozen=True, eq=False)
class EcgBeat(TimeSeries):
    """ECG beats of one lead in mV, one window around each R peak (`beat_windows`: 0.25 s before
    to 0.45 s after, 252 samples at 360 Hz). values: (b, 1, t); the ``ecg-beat-fsq`` codec
    resamples any t to its own 256 steps, so records at other sampling rates fit too."""

    name: ClassVar[str] = "ecg_beat"

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "EcgBeat":
        """Synthetic P-QRS-T shapes (Gaussian bumps, shape tests only), 1 x 252 steps at 360 Hz."""
        t = torch.arange(252, dtype=torch.float32) / 360.0 - 0.25  # seconds from the R peak
        u = torch.rand(batch_size, 3, generator=generator)
        bump = lambda a, mu, s: a * torch.exp(-0.5 * ((t - mu) / s) ** 2)  # noqa: E731
        values = (bump(0.15, -0.18, 0.02) + bump(1.0 + u[:, :1], 0.0, 0.012) - bump(0.3, 0.03, 0.01)
                  + bump(0.3 * (1 + u[:, 1:2]), 0.25 + 0.05 * u[:, 2:], 0.04))
        return cls(values=values[:, None], sample_rate=360.0)


#: AAMI EC57 beat classes, in label order: N normal / bundle branch block / escape, S supraventricular
#: ectopic, V ventricular ectopic, F fusion, Q paced / unclassifiable
AAMI_CLASSES = ("N", "S", "V", "F", "Q")
_AAMI_OF_SYMBOL = {**dict.fromkeys("NLRej", "N"), **dict.fromkeys("AaJS", "S"), **dict.fromkeys("VE", "V"),
                   "F": "F", **dict.fromkeys("/fQ", "Q")}


def aami_class(symbol: str) -> int | None:
    """Label (index into `AAMI_CLASSES`) of a MIT-BIH beat annotation symbol (``A`` -> 1 = S);
    None for symbols that are not beats (rhythm ``+``, noise ``~``, comments ``"``)."""
    cls = _AAMI_OF_SYMBOL.get(symbol)
    return None if cls is None else AAMI_CLASSES.index(cls)


@dataclass(frozen=True, eq=False)
class BeatClass(Columns):
    """The class of a beat: values (b, 1), the label 0..4 = `AAMI_CLASSES` N, S, V, F, Q
    (`aami_class` maps MIT-BIH symbols: N -> 0, A -> 1, V -> 2)."""

    name: ClassVar[str] = "beat_class"
    columns: ClassVar[tuple[str, ...]] = ("label",)

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "BeatClass":
        """Labels 0, 1, 2, 0, ... values: (batch_size, 1)."""
        return cls(values=torch.arange(batch_size).remainder(3).float()[:, None])

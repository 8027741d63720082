"""Generic modalities that ship with mmtok (one per codec family). Plugins define their own,
more specific ones (``HSCImage``, ``CTVolume``...) the same way.

`Columns` is the family of tables (rows of named numeric columns); plugins subclass it with
their own name and ``columns`` (``PatientDemographics``, ``GaiaPhotometry``...).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mmtok.errors import ModalityError
from mmtok.modality import Modality

__all__ = ["Image", "Spectrum", "TimeSeries", "Volume", "Columns", "Scalars", "stack_columns"]


def _randn(*shape: int, generator: torch.Generator | None = None) -> Tensor:
    return torch.randn(*shape, generator=generator)


@dataclass(frozen=True, eq=False)
class Image(Modality):
    """A batch of multi-band 2D images. flux: (b, c, h, w)."""
    name: ClassVar[str] = "image"
    flux: Float[Tensor, "b c h w"]

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "Image":
        return cls(flux=_randn(batch_size, 3, 32, 32, generator=generator))


@dataclass(frozen=True, eq=False)
class Spectrum(Modality):
    """A batch of 1D spectra. values: (b, c, l) on the wavelength grid wavelength: (b, l)."""
    name: ClassVar[str] = "spectrum"
    values: Float[Tensor, "b c l"]
    wavelength: Float[Tensor, "b l"] | None = None

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "Spectrum":
        wl = torch.linspace(1100.0, 2498.0, 128).expand(batch_size, -1).clone()
        return cls(values=_randn(batch_size, 1, 128, generator=generator), wavelength=wl)


@dataclass(frozen=True, eq=False)
class TimeSeries(Modality):
    """A batch of regularly sampled multichannel series. values: (b, c, t).

    ``valid`` (b, t): False at steps that hold no measurement (padding; `TimeSeriesCodec` with
    ``length: pad`` sets it); None means every step is valid. ``time`` (b, t): optional sample
    times; ``sample_rate`` (Hz, not batched): optional. Neither is tokenized: pass them to
    ``decode`` again. Series of different lengths are different samples: a `TimeSeriesCodec`
    brings them to its own length (``length: pad | crop | resample``).

    Plugins subclass it with their own ``name`` (``EcgBeat``...); ``from_record`` takes a
    1-D array (t,) as one channel, or (c, t).
    """
    name: ClassVar[str] = "time_series"
    values: Float[Tensor, "b c t"]
    valid: Bool[Tensor, "b t"] | None = None
    time: Float[Tensor, "b t"] | None = None
    sample_rate: float | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, sample_id: str | None = None):
        """One series from a reader record: ``{"data": array}`` (the ``.npy`` reader) or field
        names. A 1-D ``values`` (t,) is one channel: (1, t); (c, t) is kept; anything else is an
        error naming the shape."""
        record = dict(record)
        key = "data" if set(record) == {"data"} else "values"
        if key in record:
            values = np.asarray(record.pop(key))
            if values.ndim == 1:
                values = values[None]
            elif values.ndim != 2:
                where = f"sample {sample_id!r}: " if sample_id is not None else ""
                raise ModalityError(f"{where}{cls.__name__}.values: expected (t,) for one channel or (c, t), "
                                    f"found shape {values.shape}")
            record["values"] = values
        return super().from_record(record, sample_id=sample_id)

    @classmethod
    def from_frame(cls, rows: Mapping[str, Any], channels: Sequence[str], time: str | None = None):
        """One series from long-format columns (n time steps each) -> batch of one:
        values (1, len(channels), n), time (1, n) from column ``time`` if given."""
        values = stack_columns(rows, [*channels, *([time] if time else [])], where=f"{cls.__name__}.from_frame")
        t = values[:, -1][None] if time else None
        return cls(values=values[:, :len(channels)].T[None].contiguous(), time=t)

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "TimeSeries":
        """Noisy sinusoids, 1 channel x 64 steps."""
        t = torch.arange(64, dtype=torch.float32)
        u = torch.rand(batch_size, 2, generator=generator)
        freq, phase = (1.0 + 3.0 * u[:, :1]) / 64, 2 * np.pi * u[:, 1:]
        values = torch.sin(2 * np.pi * freq * t + phase) + 0.1 * _randn(batch_size, 64, generator=generator)
        return cls(values=values[:, None], time=t.expand(batch_size, -1).clone())


@dataclass(frozen=True, eq=False)
class Volume(Modality):
    """A batch of 3D volumes. values: (b, c, d, h, w)."""
    name: ClassVar[str] = "volume"
    values: Float[Tensor, "b c d h w"]

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "Volume":
        return cls(values=_randn(batch_size, 1, 8, 16, 16, generator=generator))


def _column_names(rows: Any) -> list[str]:
    """Column names of a mapping / DataFrame (its keys) or a numpy structured array."""
    if isinstance(rows, np.ndarray):
        return list(rows.dtype.names or ())
    return list(rows.keys())


def stack_columns(rows: Any, columns: Sequence[str], *, where: str) -> Tensor:
    """Named 1-D columns of equal length n -> float32 tensor (n, len(columns)).

    ``rows``: a mapping of 1-D arrays, a pandas DataFrame or a numpy structured array; extra
    columns are ignored. Raises `ModalityError`, prefixed with ``where`` (e.g.
    ``"LabResults.from_frame"``), naming every missing column, or a non-numeric or ragged one.
    """
    available = _column_names(rows)
    missing = [c for c in columns if c not in available]
    if missing:
        raise ModalityError(f"{where}: missing column(s) {missing}; needs "
                            f"{list(columns)}, found {available}")
    arrays = []
    for c in columns:
        a = np.asarray(rows[c])
        if a.ndim != 1:
            raise ModalityError(f"{where}: column {c!r} must be 1-D, found shape {a.shape}")
        if a.dtype.kind not in "biuf":
            raise ModalityError(f"{where}: column {c!r} must be numeric, found dtype {a.dtype}")
        arrays.append(a.astype(np.float32))
    lengths = {c: len(a) for c, a in zip(columns, arrays)}
    if len(set(lengths.values())) > 1:
        raise ModalityError(f"{where}: columns have different lengths {lengths}")
    return torch.from_numpy(np.stack(arrays, axis=1)) if arrays else torch.zeros(0, 0)


@dataclass(frozen=True, eq=False)
class Columns(Modality):
    """Family base of tables: a batch of b rows of c named numeric columns. values: (b, c).

    Subclasses set ``name`` and, for a fixed schema, ``columns`` (the c names, in order)::

        @dataclass(frozen=True, eq=False)
        class VitalSigns(Columns):
            name: ClassVar[str] = "vital_signs"
            columns: ClassVar[tuple[str, ...]] = ("bp", "heart_rate")

    When the names vary per batch (a generic CSV table, the properties of one data set), the
    subclass leaves ``columns`` empty, declares a ``tuple[str, ...]`` field holding them and names
    that field in ``names_field``. `column_names` is the names of this batch either way; when
    there are names, construction checks that ``values`` has one column per name. No value may
    be missing (NaN is refused, as in every modality): drop or impute the rows first.
    """

    values: Float[Tensor, "b c"]

    # declared after `values`: a subclass may replace `columns` by a per-batch field (`Table`),
    # which then keeps this position among the dataclass fields
    #: the names of the c columns, in order, when the class fixes them; () when it does not
    columns: ClassVar[tuple[str, ...]] = ()
    #: the field holding per-batch column names (for classes without fixed ``columns``)
    names_field: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        columns = cls.__dict__.get("columns")
        if columns is None or columns == ():
            return  # inherited, or no fixed names (e.g. the default of a per-batch field `columns`)
        if not isinstance(columns, tuple) or not all(isinstance(c, str) and c for c in columns):
            raise ModalityError(f"{cls.__qualname__}.columns must be a tuple of non-empty strings, "
                                f"found {columns!r}")
        dupes = sorted({c for c in columns if list(columns).count(c) > 1})
        if dupes:
            raise ModalityError(f"{cls.__qualname__}.columns repeats {dupes}")

    # ------------------------------------------------------------------ names
    @property
    def column_names(self) -> tuple[str, ...]:
        """The names of this batch's columns: the per-batch field ``names_field`` if the class
        has one, else the class's ``columns`` (() when the columns are unnamed)."""
        if self.names_field is not None:
            return tuple(getattr(self, self.names_field))
        return type(self).columns

    def check(self) -> None:
        super().check()
        names = self.column_names
        if names and len(names) != self.values.shape[1]:
            cls = type(self).__name__
            raise ModalityError(f"{cls}.values has {self.values.shape[1]} columns but "
                                f"{cls}.{self.names_field or 'columns'} names {len(names)}: {list(names)}")

    def column(self, name: str) -> Tensor:
        """The values (b,) of one named column."""
        names = self.column_names
        if name not in names:
            raise ModalityError(f"{type(self).__name__} has no column {name!r}; columns are "
                                f"{list(names)}")
        return self.values[:, names.index(name)]

    # ------------------------------------------------------------------ tables
    @classmethod
    def from_frame(cls, rows: Any, columns: Sequence[str] | None = None):
        """Named 1-D columns (a dict of arrays, e.g. from mmtok's csv reader, a pandas
        DataFrame or a numpy structured array; n rows) -> a batch of n. Extra columns are
        ignored; missing ones raise `ModalityError` naming them.

        A class with fixed ``columns`` takes those (``columns`` may only repeat them); otherwise
        ``columns`` selects and orders them (default: every numeric column, in order) and they
        become the batch's names.
        """
        where = f"{cls.__name__}.from_frame"
        if cls.columns:
            if columns is not None and tuple(columns) != cls.columns:
                raise ModalityError(f"{where}: {cls.__name__} has the fixed columns "
                                    f"{list(cls.columns)}, got columns={list(columns)}")
            return cls(values=stack_columns(rows, cls.columns, where=where))
        if columns is None:
            columns = [c for c in _column_names(rows) if np.asarray(rows[c]).dtype.kind in "biuf"]
            if not columns:
                raise ModalityError(f"{where}: no numeric column among {_column_names(rows)}")
        values = stack_columns(rows, columns, where=where)
        if cls.names_field is None:
            return cls(values=values)
        return cls(values=values, **{cls.names_field: tuple(columns)})

    def to_frame(self) -> dict[str, np.ndarray]:
        """Batch -> {column: float32 array (b,)}; unnamed columns are called c0, c1, ..."""
        names = self.column_names or tuple(f"c{j}" for j in range(self.values.shape[1]))
        values = self.values.detach().cpu().numpy()
        return {c: values[:, j] for j, c in enumerate(names)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, sample_id: str | None = None):
        """One row (a batch of one) from a reader record or a manifest table row.

        With fixed ``columns``: either the whole row, ``{"values": (c,)}`` (or ``{"data": (c,)}``
        from the ``.npy`` reader), or one number per named column (extra keys, e.g. an id or
        coordinates, are ignored; a number a CSV reader kept as text is parsed). Without fixed
        columns, the record's keys must be field names (`Modality.from_record`).
        """
        if not cls.columns:
            return super().from_record(record, sample_id=sample_id)
        where = f"sample {sample_id!r}: " if sample_id is not None else ""
        name, n = cls.__name__, len(cls.columns)
        whole = "values" if "values" in record else "data" if set(record) == {"data"} else None
        if whole is not None:
            values = np.asarray(record[whole])
            if values.shape != (n,):
                raise ModalityError(f"{where}{name}.values: expected {n} values "
                                    f"({', '.join(cls.columns)}), found shape {values.shape}")
            if values.dtype.kind not in "biuf":
                raise ModalityError(f"{where}{name}.values: expected numbers, found dtype {values.dtype}")
            return cls.from_arrays({"values": values.astype(np.float64)}, sample_id=sample_id)
        missing = [c for c in cls.columns if c not in record]
        if missing:
            raise ModalityError(f"{where}{name}: missing column(s) {missing}; needs "
                                f"{list(cls.columns)}, found {sorted(record)}")
        row = [cls._number(record[c], f"{where}{name}: column {c!r}") for c in cls.columns]
        return cls.from_arrays({"values": np.asarray(row, dtype=np.float64)}, sample_id=sample_id)

    @staticmethod
    def _number(value: Any, what: str) -> float:
        arr = np.asarray(value)
        if arr.size == 1 and arr.dtype.kind in "biuf":
            return float(arr.reshape(()))
        if arr.size == 1 and arr.dtype.kind in "US":  # a CSV column with text elsewhere
            text = str(arr.reshape(()))
            try:
                return float(text)
            except ValueError:
                raise ModalityError(f"{what} must be one number, found the text {text!r}") from None
        raise ModalityError(f"{what} must be one number, found {arr.dtype} array of shape {arr.shape}")


@dataclass(frozen=True, eq=False)
class Scalars(Columns):
    """A batch of rows of c numeric columns (unnamed). values: (b, c)."""
    name: ClassVar[str] = "scalars"

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None) -> "Scalars":
        return cls(values=_randn(batch_size, 4, generator=generator))

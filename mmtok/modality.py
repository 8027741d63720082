"""`Modality`: a typed, shape-checked batch of one kind of data.

A modality is a frozen dataclass whose tensor fields carry jaxtyping annotations. Every tensor
field is batched along its first axis, which must be named ``b``::

    @dataclass(frozen=True)
    class CTVolume(Modality):
        name: ClassVar[str] = "ct_volume"
        hu: Float[Tensor, "b 1 d h w"]
        spacing_mm: Float[Tensor, "b 3"]

Construction checks every field with beartype (shapes shared across fields, e.g. ``b``, must
agree) and that float tensors are finite; a bad field raises `ModalityError` naming the class,
the field, the expected annotation and the shape / dtype found. A subclass with more invariants
(non-negative variances, column names matching a width) overrides ``check()`` and calls
``super().check()`` first, so pipelines that defer checks (`deferred_checks`) defer those too.

Note: modules that define modalities must not use ``from __future__ import annotations``; the
annotations would become strings and this module refuses them rather than silently skipping checks.
"""

import contextlib
import contextvars
import dataclasses
import math
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from beartype import beartype
from jaxtyping import TypeCheckError, jaxtyped
from torch import Tensor

from mmtok.errors import ModalityError

__all__ = ["Modality", "ModalityError", "deferred_checks", "describe"]

_DEFERRED = contextvars.ContextVar("mmtok_deferred_modality_checks", default=False)


@contextlib.contextmanager
def deferred_checks():
    """Modalities built inside skip the shape / finiteness checks of construction.

    For pipelines that build many single samples and collate them: `Modality.collate` (outside
    the block) checks the whole batch at once, and `Modality.check()` finds the culprit when the
    batch fails. `collate` refuses samples whose dtypes differ (concatenation would promote an
    int or bool sample to float and hide it), so a batch passes exactly when each of its samples
    would. Checks written in a subclass's own ``__post_init__`` still run.
    """
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def describe(value: Any) -> str:
    """Short human description of a value: dtype and shape for arrays, the type otherwise."""
    if isinstance(value, Tensor):
        return f"{str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"numpy {value.dtype} array of shape {value.shape} (expected a torch.Tensor)"
    return f"{type(value).__name__} {value!r}"[:120]


def _tensor_hint(hint: Any) -> Any:
    """The jaxtyping array type inside ``hint`` (also inside ``X | None``), or None."""
    if hasattr(hint, "dim_str") and hasattr(hint, "dtypes"):
        return hint
    for arg in typing.get_args(hint):
        if hasattr(arg, "dim_str") and hasattr(arg, "dtypes"):
            return arg
    return None


def _is_tensor_hint(hint: Any) -> bool:
    return _tensor_hint(hint) is not None


def _all_finite(value: torch.Tensor) -> bool:
    """No NaN / inf in ``value``. A finite sum proves it (a NaN or inf anywhere makes the sum NaN or
    inf) at a tenth of ``isfinite(value).all()``'s cost; only a sum that overflows needs the full check."""
    return math.isfinite(value.sum().item()) or bool(torch.isfinite(value).all())

class Modality:
    """Base class of every modality. Subclasses are ``@dataclass(frozen=True)``.

    Class metadata:
        name: unique modality name, e.g. ``"patient_demographics"``.
        token_key: default token key of its stream (``"tok_" + name`` unless set).
    """

    name: ClassVar[str]
    token_key: ClassVar[str]

    # Filled per subclass on first construction.
    _checker: ClassVar[Any] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # an abstract intermediate class (e.g. a family base); checked when named
        if not re.fullmatch(r"[a-z][a-z0-9_]*", cls.name):
            raise ModalityError(f"{cls.__qualname__}.name must be snake_case, found {cls.name!r}")
        if "token_key" not in cls.__dict__:
            cls.token_key = f"tok_{cls.name}"
        for field, hint in cls.__dict__.get("__annotations__", {}).items():
            if isinstance(hint, str):
                raise ModalityError(
                    f"{cls.__qualname__}.{field}: annotation is the string {hint!r}; remove "
                    "`from __future__ import annotations` from the module that defines it, "
                    "otherwise shapes cannot be checked"
                )
            if _is_tensor_hint(hint):
                hint = _tensor_hint(hint)
                dims = hint.dim_str.split()
                if not dims or dims[0] != "b":
                    raise ModalityError(
                        f"{cls.__qualname__}.{field}: tensor fields are batched, their first axis "
                        f"must be named 'b'; found {hint.dim_str!r}"
                    )
        cls._checker = None

    # ----------------------------------------------------------------- validation
    @classmethod
    def _fields(cls) -> tuple[dataclasses.Field, ...]:
        if not dataclasses.is_dataclass(cls):
            raise ModalityError(f"{cls.__qualname__} must be decorated with @dataclass(frozen=True)")
        return tuple(f for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def tensor_fields(cls) -> tuple[str, ...]:
        """Names of the batched tensor fields, in declaration order."""
        cached = cls.__dict__.get("_tensor_fields")
        if cached is None:
            hints = typing.get_type_hints(cls, include_extras=True)
            cached = tuple(f.name for f in cls._fields() if _is_tensor_hint(hints.get(f.name)))
            cls._tensor_fields = cached
        return cached

    @classmethod
    def _build_checker(cls, n_fields: int | None = None):
        fields = cls._fields()[:n_fields]
        hints = typing.get_type_hints(cls, include_extras=True)
        names = [f.name for f in fields]
        namespace: dict[str, Any] = {}
        exec(f"def check({', '.join(names)}):\n    return None", namespace)  # noqa: S102
        fn = namespace["check"]
        fn.__annotations__ = {n: hints[n] for n in names}
        fn.__qualname__ = cls.__qualname__
        return jaxtyped(typechecker=beartype)(fn)

    def __post_init__(self) -> None:
        if not _DEFERRED.get():
            self.check()

    def check(self) -> None:
        """Run the construction checks (shapes, dtypes, finiteness). Raises `ModalityError`."""
        cls = type(self)
        if cls.__dict__.get("_checker") is None:
            cls._checker = cls._build_checker()
        values = {f.name: getattr(self, f.name) for f in cls._fields()}
        try:
            cls._checker(**values)
        except TypeCheckError as err:
            raise self._explain(values, err) from None
        for field in cls.tensor_fields():
            value = values[field]
            if value is not None and value.is_floating_point() and not _all_finite(value):
                bad = int((~torch.isfinite(value)).sum())
                raise ModalityError(
                    f"{cls.__name__}.{field}: expected finite values, found {bad} NaN/inf "
                    f"in a {describe(value)}"
                )

    @classmethod
    def _explain(cls, values: dict[str, Any], err: TypeCheckError) -> ModalityError:
        """Find the first field that fails (checking growing prefixes) and say why."""
        hints = typing.get_type_hints(cls, include_extras=True)
        names = list(values)
        for i in range(1, len(names) + 1):
            try:
                cls._build_checker(i)(**{n: values[n] for n in names[:i]})
            except TypeCheckError as sub:
                field = names[i - 1]
                bound = re.search(r"axis annotation are as follows\.\n(.*?)(?:\n\n|$)", str(sub), re.S)
                hint = _tensor_hint(hints[field]) or hints[field]
                expected = f"{getattr(hint, '__name__', hint)}" if not _is_tensor_hint(hint) else (
                    f"{hint.__name__.split('[')[0]}[Tensor, {hint.dim_str!r}]")
                extra = f" (axes bound by earlier fields: {', '.join(bound.group(1).split())})" if bound else ""
                return ModalityError(
                    f"{cls.__name__}.{field}: expected {expected}{extra}, "
                    f"found {describe(values[field])}"
                )
        return ModalityError(f"{cls.__name__}: {err}")

    # ----------------------------------------------------------------- batch helpers
    def __len__(self) -> int:
        for f in self.tensor_fields():
            if (v := getattr(self, f)) is not None:
                return int(v.shape[0])
        raise ModalityError(f"{type(self).__name__} has no tensor fields set, so no batch size")

    @property
    def batch_size(self) -> int:
        return len(self)

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor):
        """Select samples along the batch axis; an int keeps a batch of one."""
        if isinstance(index, int):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"{type(self).__name__}: index {index} out of range for batch of {n}")
            index = slice(index, index + 1 if index != -1 else None)
        elif isinstance(index, Sequence):
            index = torch.as_tensor(list(index), dtype=torch.long)
        return self.replace(**{f: v[index] for f in self.tensor_fields()
                               if (v := getattr(self, f)) is not None})

    def replace(self, **changes: Any):
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move every tensor field to ``device``; ``dtype`` applies to floating fields only."""
        out = {}
        for f in self.tensor_fields():
            v = getattr(self, f)
            if v is None:
                continue
            out[f] = v.to(device=device, dtype=dtype if (dtype and v.is_floating_point()) else None)
        return self.replace(**out)

    @classmethod
    def collate(cls, samples: Sequence["Modality"]):
        """Concatenate batches (typically single samples) along the batch axis.

        Non-tensor fields must be equal in every sample; otherwise the samples are not one batch.
        """
        if not samples:
            raise ModalityError(f"{cls.__name__}.collate: got no samples")
        for i, s in enumerate(samples):
            if type(s) is not cls:
                raise ModalityError(f"{cls.__name__}.collate: sample {i} is a {type(s).__name__}")
        tensors = set(cls.tensor_fields())
        out: dict[str, Any] = {}
        for f in cls._fields():
            vals = [getattr(s, f.name) for s in samples]
            if f.name in tensors and any(v is None for v in vals):
                if not all(v is None for v in vals):
                    raise ModalityError(f"{cls.__name__}.collate: optional field {f.name!r} is "
                                        "set in some samples and None in others")
                out[f.name] = None
            elif f.name in tensors:
                shapes = {tuple(v.shape[1:]) for v in vals}
                if len(shapes) > 1:
                    raise ModalityError(
                        f"{cls.__name__}.collate: field {f.name!r} has different per-sample shapes "
                        f"{sorted(shapes)}; bucket samples by shape before collating"
                    )
                dtypes = {v.dtype for v in vals}
                if len(dtypes) > 1:  # torch.cat would promote (int + float -> float) and hide a bad sample
                    raise ModalityError(
                        f"{cls.__name__}.collate: field {f.name!r} has different dtypes "
                        f"{sorted(str(d).replace('torch.', '') for d in dtypes)}; convert the samples to "
                        "one dtype (or bucket them by dtype) before collating"
                    )
                out[f.name] = torch.cat(vals, dim=0)
            else:
                if any(v != vals[0] for v in vals[1:]):
                    raise ModalityError(
                        f"{cls.__name__}.collate: non-batched field {f.name!r} differs between samples"
                    )
                out[f.name] = vals[0]
        return cls(**out)

    @classmethod
    def from_arrays(cls, fields: Mapping[str, Any], *, sample_id: str | None = None,
                    batched: bool = False):
        """Build a modality from numpy arrays / lists (one sample unless ``batched``).

        Floating arrays become float32, integer arrays int64, bool stays bool. Errors name the
        sample id when one is given.
        """
        tensors = set(cls.tensor_fields())
        known = {f.name for f in cls._fields()}
        unknown = set(fields) - known
        where = f"sample {sample_id!r}: " if sample_id is not None else ""
        if unknown:
            raise ModalityError(f"{where}{cls.__name__} has no field(s) {sorted(unknown)}; "
                                f"fields are {sorted(known)}")
        values: dict[str, Any] = {}
        for key, value in fields.items():
            if key in tensors and value is not None:
                arr = np.asarray(value)
                if arr.dtype.kind == "f":
                    t = torch.as_tensor(arr, dtype=torch.float32)
                elif arr.dtype.kind in "iu":
                    t = torch.as_tensor(arr.astype(np.int64))
                elif arr.dtype.kind == "b":
                    t = torch.as_tensor(arr)
                else:
                    raise ModalityError(f"{where}{cls.__name__}.{key}: expected a numeric array, "
                                        f"found dtype {arr.dtype}")
                values[key] = t if batched else t.unsqueeze(0)
            else:
                values[key] = value
        try:
            return cls(**values)
        except ModalityError as err:
            raise ModalityError(f"{where}{err}") from None
        except TypeError as err:  # missing / unexpected constructor arguments
            raise ModalityError(f"{where}{cls.__name__}: {err}") from None

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, sample_id: str | None = None):
        """One sample from what a reader returned (``{name: array}``).

        Default mapping, first that applies: record keys are field names; a single array
        ``"data"`` (the ``.npy`` reader) fills the first tensor field. Tables (one number per
        named column) are `mmtok.modalities.Columns`, which maps a row itself. Plugins override
        this when their files need more (band checks, unit conversion).
        """
        fields = cls.tensor_fields()
        where = f"sample {sample_id!r}: " if sample_id is not None else ""
        if set(record) <= {f.name for f in cls._fields()}:
            return cls.from_arrays(record, sample_id=sample_id)
        if set(record) == {"data"} and len(fields) >= 1:
            return cls.from_arrays({fields[0]: record["data"]}, sample_id=sample_id)
        raise ModalityError(f"{where}{cls.__name__} cannot be built from keys {sorted(record)}; "
                            f"its fields are {[f.name for f in cls._fields()]}")

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], *, sample_ids: Sequence[str] | None = None):
        """One batch from many samples' reader records: what ``from_record`` of each and `collate`
        give, built at once. With the default ``from_record`` and records that are all arrays of one
        shape and dtype per key, the arrays are stacked and the checks run once on the batch (this is
        how `mmtok encode` builds its batches: per-sample work is what caps a light codec's speed).
        Otherwise each record goes through ``from_record``. A plugin whose ``from_record`` converts
        its files may override this to batch that conversion too."""
        if not records:
            raise ModalityError(f"{cls.__name__}.from_records: got no records")
        stacked = cls._stack_records(records) if cls.from_record.__func__ is Modality.from_record.__func__ else None
        if stacked is not None:
            return cls.from_arrays(stacked, batched=True)
        ids = list(sample_ids) if sample_ids is not None else [None] * len(records)
        with deferred_checks():
            parts = [cls.from_record(r, sample_id=i) for r, i in zip(records, ids)]
        return cls.collate(parts)

    @classmethod
    def _record_names(cls, record: Mapping[str, Any]) -> dict[str, str] | None:
        """{record key: tensor field} of the default ``from_record`` mapping, None when ``record``
        does not map onto tensor fields that way."""
        tensors = cls.tensor_fields()
        if set(record) == {"data"} and tensors and "data" not in {f.name for f in cls._fields()}:
            return {"data": tensors[0]}
        if set(record) <= set(tensors):
            return {k: k for k in record}
        return None

    @classmethod
    def _batches_records(cls) -> bool:
        """Whether `from_records` is the default one that stacks default-mapped records: a batch of
        such records is then `_from_stacked` of their arrays stacked along a new first axis."""
        return (cls.from_record.__func__ is Modality.from_record.__func__
                and cls.from_records.__func__ is Modality.from_records.__func__)

    @classmethod
    def _from_stacked(cls, record: Mapping[str, np.ndarray]):
        """What `from_records` gives for records ``{k: record[k][i]}``, i = 0 .. n - 1, where the
        default mapping applies (`_batches_records`), from the stacked arrays without copying them
        row by row. None when ``record`` does not map onto tensor fields."""
        names = cls._record_names(record)
        return None if names is None else cls.from_arrays({names[k]: v for k, v in record.items()}, batched=True)

    @classmethod
    def _stack_records(cls, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray] | None:
        """{tensor field: (n, ...) stacked array} when every record maps to the same tensor fields
        with arrays of one shape and dtype (the default ``from_record`` mapping); else None."""
        first = records[0]
        names = cls._record_names(first)
        if names is None:
            return None
        keys = first.keys()
        signature = [(v.shape, v.dtype) if isinstance(v, np.ndarray) else None for v in first.values()]
        if None in signature:
            return None
        for r in records[1:]:
            if r.keys() != keys or any(not isinstance(v, np.ndarray) or (v.shape, v.dtype) != sig
                                       for v, sig in zip(r.values(), signature)):
                return None
        return {names[k]: np.stack([r[k] for r in records]) for k in keys}

    @classmethod
    def example(cls, batch_size: int = 2, generator: torch.Generator | None = None):
        """A small valid batch for tests and the conformance kit. Subclasses implement it."""
        raise NotImplementedError(f"{cls.__name__}.example() is not implemented")

"""Modality: shape / dtype checks with clear errors, batch helpers."""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mmtok import Columns, Modality, ModalityError


@dataclass(frozen=True, eq=False)
class Cube(Modality):
    name: ClassVar[str] = "test_cube"
    flux: Float[Tensor, "b 5 h w"]
    labels: Int[Tensor, "b h w"]
    bands: tuple[str, ...] = ("g", "r", "i", "z", "y")


def make(b=3, h=4, w=6):
    return Cube(flux=torch.randn(b, 5, h, w), labels=torch.zeros(b, h, w, dtype=torch.long))


def test_metadata_and_len():
    m = make()
    assert Cube.name == "test_cube" and Cube.token_key == "tok_test_cube"
    assert len(m) == 3 and m.batch_size == 3
    assert Cube.tensor_fields() == ("flux", "labels")


def test_wrong_band_count_names_class_field_expected_found():
    with pytest.raises(ModalityError) as err:
        Cube(flux=torch.randn(2, 4, 4, 6), labels=torch.zeros(2, 4, 6, dtype=torch.long))
    msg = str(err.value)
    assert "Cube.flux" in msg and "b 5 h w" in msg and "(2, 4, 4, 6)" in msg


def test_inconsistent_axis_between_fields_is_blamed_on_the_later_field():
    with pytest.raises(ModalityError) as err:
        Cube(flux=torch.randn(2, 5, 4, 6), labels=torch.zeros(2, 4, 7, dtype=torch.long))
    msg = str(err.value)
    assert "Cube.labels" in msg and "w=6" in msg and "(2, 4, 7)" in msg


def test_wrong_dtype_is_reported():
    with pytest.raises(ModalityError, match=r"Cube.labels.*float32"):
        Cube(flux=torch.randn(2, 5, 4, 6), labels=torch.zeros(2, 4, 6))


def test_non_finite_values_are_rejected():
    flux = torch.randn(2, 5, 4, 6)
    flux[1, 2, 3, 4] = float("inf")
    with pytest.raises(ModalityError, match="1 NaN/inf"):
        Cube(flux=flux, labels=torch.zeros(2, 4, 6, dtype=torch.long))


def test_finite_values_whose_sum_overflows_are_accepted_and_nan_among_them_is_not():
    # the check sums first: a sum that overflows (all finite) must fall back to the element check
    flux = torch.full((2, 5, 4, 6), 3e38)
    labels = torch.zeros(2, 4, 6, dtype=torch.long)
    assert torch.isinf(flux.sum())
    Cube(flux=flux, labels=labels)
    Cube(flux=flux.half().clamp(max=6e4), labels=labels)  # a float16 sum overflows at 65504
    flux[0, 0, 0, 0] = float("nan")
    with pytest.raises(ModalityError, match="1 NaN/inf"):
        Cube(flux=flux, labels=labels)


def test_numpy_instead_of_tensor_is_explained():
    with pytest.raises(ModalityError, match="numpy"):
        Cube(flux=np.zeros((2, 5, 4, 6), np.float32), labels=torch.zeros(2, 4, 6, dtype=torch.long))


def test_frozen():
    m = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.flux = torch.zeros(1)


def test_indexing_collate_and_to():
    m = make(b=4)
    one = m[2]
    assert isinstance(one, Cube) and len(one) == 1
    assert torch.equal(one.flux[0], m.flux[2])
    assert len(m[1:3]) == 2 and len(m[[0, 3]]) == 2 and len(m[torch.tensor([1, 2, 3])]) == 3
    again = Cube.collate([m[i] for i in range(4)])
    assert torch.equal(again.flux, m.flux) and again.bands == m.bands
    half = m.to(dtype=torch.float64)
    assert half.flux.dtype == torch.float64 and half.labels.dtype == torch.long
    with pytest.raises(IndexError):
        m[4]


def test_collate_refuses_different_shapes_and_metadata():
    with pytest.raises(ModalityError, match="bucket samples by shape"):
        Cube.collate([make(1, 4, 6), make(1, 4, 8)])
    other = dataclasses.replace(make(1), bands=("u", "g", "r", "i", "z"))
    with pytest.raises(ModalityError, match="bands"):
        Cube.collate([make(1), other])


def test_collate_refuses_different_dtypes_instead_of_promoting():
    """An int sample built under deferred checks, collated with float ones: concatenation would
    make a valid float batch of it; collate refuses, and the sample alone fails its check."""
    from mmtok.modality import deferred_checks

    with deferred_checks():
        ints = Cube(flux=torch.ones(1, 5, 4, 6, dtype=torch.int32), labels=torch.zeros(1, 4, 6, dtype=torch.long))
    with pytest.raises(ModalityError, match=r"field 'flux' has different dtypes \['float32', 'int32'\]"):
        Cube.collate([make(1), ints, make(1)])
    with pytest.raises(ModalityError, match="expected Float"):
        ints.check()
    with pytest.raises(ModalityError, match="different dtypes"):
        Cube.collate([make(1), make(1).replace(flux=torch.randn(1, 5, 4, 6, dtype=torch.float64))])


def test_from_arrays_names_the_sample():
    m = Cube.from_arrays({"flux": np.ones((5, 2, 2)), "labels": np.ones((2, 2), np.int32)})
    assert m.flux.dtype == torch.float32 and m.labels.dtype == torch.long and len(m) == 1
    with pytest.raises(ModalityError, match=r"sample 'obj-17'.*Cube.flux"):
        Cube.from_arrays({"flux": np.ones((4, 2, 2)), "labels": np.ones((2, 2), np.int32)},
                         sample_id="obj-17")
    with pytest.raises(ModalityError, match=r"sample 'obj-3'.*no field"):
        Cube.from_arrays({"fluxx": np.ones((5, 2, 2))}, sample_id="obj-3")


def test_string_annotations_are_refused_at_class_definition():
    with pytest.raises(ModalityError, match="from __future__ import annotations"):
        @dataclass(frozen=True)
        class Bad(Modality):
            name: ClassVar[str] = "bad_strings"
            x: "Float[Tensor, 'b 3']"


def test_tensor_fields_must_be_batched():
    with pytest.raises(ModalityError, match="first axis"):
        @dataclass(frozen=True)
        class Bad(Modality):
            name: ClassVar[str] = "bad_batch"
            x: Float[Tensor, "3 b"]


def test_validation_cannot_be_bypassed_by_replace():
    m = make()
    with pytest.raises(ModalityError):
        m.replace(flux=torch.randn(3, 4, 4, 6))


@dataclass(frozen=True, eq=False)
class PositiveCube(Cube):
    name: ClassVar[str] = "test_positive_cube"

    def check(self) -> None:
        super().check()
        if bool((self.flux < 0).any()):
            raise ModalityError("PositiveCube.flux: expected values >= 0")


def test_deferred_checks_run_at_collate_and_check():
    from mmtok.modality import deferred_checks

    good = PositiveCube(flux=torch.rand(1, 5, 2, 2), labels=torch.zeros(1, 2, 2, dtype=torch.long))
    with deferred_checks():  # neither the shape check nor the subclass check runs here
        nan = PositiveCube(flux=torch.full((1, 5, 2, 2), float("nan")), labels=good.labels)
        negative = PositiveCube(flux=-torch.ones(1, 5, 2, 2), labels=good.labels)
    with pytest.raises(ModalityError, match="NaN/inf"):
        nan.check()
    with pytest.raises(ModalityError, match=">= 0"):
        negative.check()
    with pytest.raises(ModalityError, match=">= 0"):  # collating outside the block checks the batch
        PositiveCube.collate([good, negative])
    assert len(PositiveCube.collate([good, good])) == 2
    with pytest.raises(ModalityError, match="NaN/inf"):  # the block ended: checks are back
        PositiveCube(flux=nan.flux, labels=good.labels)


@dataclass(frozen=True, eq=False)
class Vitals(Columns):
    name: ClassVar[str] = "test_vitals"
    columns: ClassVar[tuple[str, ...]] = ("bp", "heart_rate")


@dataclass(frozen=True, eq=False)
class Assays(Columns):  # the names differ per data set: a per-batch field
    name: ClassVar[str] = "test_assays"
    names_field: ClassVar[str | None] = "names"
    names: tuple[str, ...] = ()


def test_columns_width_names_and_helpers():
    v = Vitals(values=torch.tensor([[90.0, 60.0], [120.0, 80.0]]))
    assert v.column_names == Vitals.columns and v.column("heart_rate").tolist() == [60.0, 80.0]
    assert {k: a.tolist() for k, a in v.to_frame().items()} == {"bp": [90.0, 120.0], "heart_rate": [60.0, 80.0]}
    assert torch.equal(Vitals.from_frame(v.to_frame()).values, v.values)
    with pytest.raises(ModalityError, match=r"Vitals.values has 3 columns but Vitals.columns names 2: "
                                            r"\['bp', 'heart_rate'\]"):
        Vitals(values=torch.zeros(2, 3))
    with pytest.raises(ModalityError, match=r"Vitals has no column 'spo2'; columns are \['bp', 'heart_rate'\]"):
        v.column("spo2")
    with pytest.raises(ModalityError, match=r"Vitals.from_frame: missing column\(s\) \['heart_rate'\]"):
        Vitals.from_frame({"bp": [1.0]})
    a = Assays.from_frame({"oil": [1.0, 2.0], "id": np.array(["a", "b"]), "water": [3, 4]})
    assert a.names == a.column_names == ("oil", "water") and Assays.columns == ()
    assert Assays.collate([a[0], a[1]]).names == ("oil", "water")
    with pytest.raises(ModalityError, match=r"Assays.values has 2 columns but Assays.names names 3"):
        Assays(values=torch.zeros(1, 2), names=("x", "y", "z"))
    assert Assays(values=torch.zeros(1, 2)).to_frame().keys() == {"c0", "c1"}
    with pytest.raises(ModalityError, match="repeats"):
        @dataclass(frozen=True, eq=False)
        class Twice(Columns):
            name: ClassVar[str] = "test_twice"
            columns: ClassVar[tuple[str, ...]] = ("a", "a")


def test_columns_from_record_names_the_sample_and_the_column():
    row = {"id": "p1", "bp": 91.0, "heart_rate": np.str_("70")}  # a CSV column kept as text
    assert Vitals.from_record(row, sample_id="p1").values.tolist() == [[91.0, 70.0]]
    assert Vitals.from_record({"values": np.array([1, 2])}).values.dtype == torch.float32
    with pytest.raises(ModalityError, match=r"sample 'p2': Vitals: missing column\(s\) \['heart_rate'\]"):
        Vitals.from_record({"bp": 90.0}, sample_id="p2")
    with pytest.raises(ModalityError, match=r"sample 'p3': Vitals: column 'bp' must be one number, found the text ''"):
        Vitals.from_record({"bp": np.str_(""), "heart_rate": 70.0}, sample_id="p3")
    with pytest.raises(ModalityError, match=r"sample 'p4': Vitals.values: expected 2 values \(bp, heart_rate\)"):
        Vitals.from_record({"values": [1.0, 2.0, 3.0]}, sample_id="p4")
    with pytest.raises(ModalityError, match=r"sample 'p5': Vitals.values: expected finite"):
        Vitals.from_record({"bp": float("nan"), "heart_rate": 70.0}, sample_id="p5")


def test_from_records_equals_from_record_then_collate():
    """The batched build `mmtok encode` uses gives what building each sample and collating gives,
    for the stacking fast path ("data" and field-named records) and the per-record fallback."""
    import numpy as np

    from mmtok.modalities import Image

    rng = np.random.default_rng(0)
    for records in ([{"data": rng.random((1, 4, 4), dtype=np.float32)} for _ in range(5)],
                    [{"flux": rng.random((1, 4, 4)).astype(np.float64)} for _ in range(3)],
                    [{"data": rng.random((1, 4, 4), dtype=np.float32)}, {"flux": rng.random((1, 4, 4))}]):
        want = Image.collate([Image.from_record(r) for r in records])
        got = Image.from_records(records)
        assert got.flux.dtype == want.flux.dtype and torch.equal(got.flux, want.flux)
    bad = [{"data": np.ones((1, 4, 4), np.float32)}, {"data": np.full((1, 4, 4), np.nan, np.float32)}]
    with pytest.raises(ModalityError):  # the checks run on the stacked batch
        Image.from_records(bad)

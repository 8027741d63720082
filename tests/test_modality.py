"""Modality: shape / dtype checks with clear errors, batch helpers."""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mmtok import Modality, ModalityError


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

"""Readers, orientation, preprocessing and bad input, on the real CT files of examples/ct."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import mmtok
from mmtok import ModalityError
from mmtok_plugin_ct.orientation import check_affine
from mmtok.manifest import Manifest
from mmtok_plugin_ct import (AnatomyMask, CTPreprocessConfig, CTVolume, DicomError, OrientationError, ReportText,
                             preprocess_mask, preprocess_volume, read_dicom_series, read_nifti)

DATA = Path(__file__).resolve().parents[3] / "examples" / "ct" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs the repository's examples/ct/data")


@pytest.fixture(scope="module")
def dicom():
    return read_dicom_series(DATA / "dicom_series")


def test_nifti_reader_reorients_to_canonical_with_spacing():
    ct = read_nifti(DATA / "example_ct_sm.nii.gz")  # stored RAS (x, y, z) = (122, 101, 30)
    assert ct["data"].shape == (30, 101, 122)  # (d, h, w) = (S, A, R)
    assert ct["spacing_mm"].tolist() == [3.0, 3.0, 3.0]
    raw = np.asanyarray(nib.load(DATA / "example_ct_sm.nii.gz").dataobj)
    assert np.array_equal(ct["data"], raw.transpose(2, 1, 0))
    seg = read_nifti(DATA / "example_seg.nii.gz")
    liver = ct["data"][seg["data"] == 5].mean()
    assert 20 < liver < 120  # liver parenchyma is soft tissue in HU: the mask lies on the volume


def test_dicom_series_sorted_rescaled_and_on_its_masks_grid(dicom):
    """The DICOM geometry (LPS, sorted by position, rescale applied) lands exactly on the grid of
    the NIfTI mask TotalSegmentator wrote for it (stored LAS)."""
    assert dicom["data"].shape == (20, 512, 512)
    assert np.allclose(dicom["spacing_mm"], [2.0, 0.9765625, 0.9765625])
    assert dicom["data"].min() == -1024 and dicom["data"].max() == 1839  # HU, not raw stored values
    seg = read_nifti(DATA / "example_seg_dicom.nii.gz")
    assert np.allclose(seg["affine"], dicom["affine"])
    assert 40 < dicom["data"][seg["data"] == 5].mean() < 150  # liver
    assert dicom["data"][seg["data"] == 0].mean() < -500  # mostly air outside the labels


def test_non_ct_4d_nifti_is_refused(tmp_path):
    img = nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4))
    nib.save(img, tmp_path / "fmri.nii.gz")
    with pytest.raises(OrientationError, match=r"expected a 3D volume, found 4D shape \(8, 8, 4, 3\)"):
        read_nifti(tmp_path / "fmri.nii.gz")


def test_wrong_orientation_metadata_is_refused(tmp_path):
    data = np.zeros((8, 8, 4), np.int16)
    nib.save(nib.Nifti1Image(data, None), tmp_path / "none.nii")  # no qform, no sform
    with pytest.raises(OrientationError, match="sform_code and qform_code are both 0"):
        read_nifti(tmp_path / "none.nii")
    oblique = np.eye(4)
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    oblique[:2, :2] = [[c, -s], [s, c]]
    nib.save(nib.Nifti1Image(data, oblique), tmp_path / "oblique.nii")
    with pytest.raises(OrientationError, match=r"oblique acquisition \(10.00 degrees"):
        read_nifti(tmp_path / "oblique.nii")
    with pytest.raises(OrientationError, match="zero voxel size along axis 1"):
        check_affine(np.diag([1.0, 0.0, 1.0, 1.0]))  # nibabel cannot even write this one
    with pytest.raises(OrientationError, match="NaN"):
        check_affine(np.full((4, 4), np.nan))


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path, dicom):
    files = sorted((DATA / "dicom_series").iterdir())
    series = tmp_path / "series"
    series.mkdir()
    import pydicom
    positions = sorted((float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]), f) for f in files)
    for i, (_, f) in enumerate(positions):
        if i != 7:
            shutil.copy(f, series / f.name)
    with pytest.raises(DicomError, match=r"1 slice\(s\) missing"):
        read_dicom_series(series)


def test_bad_volumes_masks_and_reports_are_clear_errors():
    with pytest.raises(ModalityError, match=r"CTVolume.hu: expected Hounsfield units"):
        CTVolume(hu=torch.full((1, 1, 4, 8, 8), 60000.0), spacing_mm=torch.ones(1, 3))
    with pytest.raises(ModalityError, match="CTVolume.spacing_mm: expected positive"):
        CTVolume(hu=torch.zeros(1, 1, 4, 8, 8), spacing_mm=torch.tensor([[3.0, 0.0, 1.0]]))
    with pytest.raises(ModalityError, match="CTVolume.axcodes"):
        CTVolume(hu=torch.zeros(1, 1, 4, 8, 8), spacing_mm=torch.ones(1, 3), axcodes="RAS")
    with pytest.raises(ModalityError, match="expected integer region ids"):
        AnatomyMask.from_record({"data": np.full((4, 8, 8), 0.5), "spacing_mm": [1, 1, 1], "axcodes": "SAR"},
                                sample_id="s1")
    with pytest.raises(ModalityError, match="sample 's1': ReportText: empty report"):
        ReportText.from_record({"text": " \n\n  "}, sample_id="s1")
    with pytest.raises(ModalityError, match="needs an 'affine' or 'axcodes'"):
        CTVolume.from_record({"hu": np.zeros((4, 8, 8)), "spacing_mm": [1, 1, 1]}, sample_id="s1")


def test_npz_record_with_affine_is_reoriented():
    """The core .npz reader plus an affine: same voxels as the NIfTI reader gives."""
    raw = nib.load(DATA / "example_ct_sm.nii.gz")
    m = CTVolume.from_record({"hu": np.asanyarray(raw.dataobj), "affine": raw.affine})
    assert m.hu.shape == (1, 1, 30, 101, 122)
    assert torch.equal(m.hu[0, 0], torch.from_numpy(read_nifti(DATA / "example_ct_sm.nii.gz")["data"]).float())


def test_preprocessing_keeps_mask_on_volume(dicom):
    vol = CTVolume.from_record(dicom)
    mask = AnatomyMask.from_record(read_nifti(DATA / "example_seg_dicom.nii.gz"))
    cfg = CTPreprocessConfig(window="soft_tissue", spacing_mm=[3.0, 1.5, 1.5], size=[16, 224, 224])
    x = preprocess_volume(vol.hu, vol.spacing_mm, cfg)
    labels = preprocess_mask(mask.labels, mask.spacing_mm, cfg)
    assert x.shape == labels.shape == (1, 1, 16, 224, 224)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # (liver mean HU 40..150) -> soft-tissue window [-160, 240]: 0.5..0.98
    assert 0.5 < float(x[labels == 5].mean()) < 0.98
    assert float(x[labels == 0].mean()) < 0.3
    lung = CTPreprocessConfig(window="lung", spacing_mm=None, size=[20, 512, 512])
    assert torch.allclose(preprocess_volume(vol.hu, vol.spacing_mm, lung),
                          ((vol.hu + 1350) / 1500).clamp(0, 1))
    with pytest.raises(ValueError, match="unknown window 'abdomen'"):
        CTPreprocessConfig(window="abdomen")


def test_mask_not_on_the_volume_grid_fails_the_sample(tmp_path):
    """A manifest pairing the NIfTI volume with the DICOM patient's mask: named error."""
    shutil.copy(DATA / "example_ct_sm.nii.gz", tmp_path / "ct.nii.gz")
    shutil.copy(DATA / "example_seg_dicom.nii.gz", tmp_path / "seg.nii.gz")
    (tmp_path / "manifest.json").write_text(json.dumps({"samples": [
        {"id": "mismatch", "modalities": {"ct_volume": "ct.nii.gz", "anatomy_mask": "seg.nii.gz"}}]}))
    problems = Manifest.load(tmp_path / "manifest.json").validate(mmtok.get_plugin_manager())
    assert [(p.sample, p.key) for p in problems] == [("mismatch", "anatomy_mask")]
    assert "expected the CT volume's grid (30, 101, 122) (d, h, w), found (20, 512, 512)" in problems[0].reason


def test_mask_with_another_spacing_fails_the_sample(tmp_path):
    """The volume's own mask, relabelled with 1.5x larger voxels along x (same grid), fails its
    sample with both spacings named; the mask as it is passes."""
    seg = nib.load(DATA / "example_seg.nii.gz")
    affine = seg.affine.copy()
    affine[:3, 0] *= 1.5
    nib.save(nib.Nifti1Image(np.asanyarray(seg.dataobj), affine), tmp_path / "respaced.nii.gz")
    shutil.copy(DATA / "example_seg.nii.gz", tmp_path / "seg.nii.gz")
    shutil.copy(DATA / "example_ct_sm.nii.gz", tmp_path / "ct.nii.gz")
    (tmp_path / "manifest.json").write_text(json.dumps({"samples": [
        {"id": "respaced", "modalities": {"ct_volume": "ct.nii.gz", "anatomy_mask": "respaced.nii.gz"}},
        {"id": "same", "modalities": {"ct_volume": "ct.nii.gz", "anatomy_mask": "seg.nii.gz"}}]}))
    problems = Manifest.load(tmp_path / "manifest.json").validate(mmtok.get_plugin_manager())
    assert [(p.sample, p.key) for p in problems] == [("respaced", "anatomy_mask")]
    assert problems[0].reason == ("AnatomyMask.spacing_mm: expected the CT volume's [3.0, 3.0, 3.0], "
                                  "found [3.0, 3.0, 4.5]")


def test_manifest_reads_a_dicom_folder_by_reader_name(tmp_path):
    shutil.copytree(DATA / "dicom_series", tmp_path / "series")
    (tmp_path / "m.json").write_text(json.dumps({"samples": [
        {"id": "a", "modalities": {"ct_volume": {"path": "series", "reader": "dicom"}}},
        {"id": "b", "modalities": {"ct_volume": "series"}},
        {"id": "c", "modalities": {"ct_volume": {"path": "../series", "reader": "dicom"}}}]}))
    manifest = Manifest.load(tmp_path / "m.json")
    problems = manifest.validate(mmtok.get_plugin_manager())
    assert [p.sample for p in problems] == ["b", "c"]
    assert "it is a folder: name its reader" in problems[0].reason
    assert "escapes the manifest's folder" in problems[1].reason

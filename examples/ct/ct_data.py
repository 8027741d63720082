"""The CT example's samples: crops of the two real cases, split so that no voxel is shared.

* ``train``: 8x64x64 crops (3 x 1.5 x 1.5 mm) of the NIfTI case, slices 0-21, every slice and
  every 8 voxels in-plane;
* ``test`` (held-out slab, same patient): crops of slices 22-29, every 16 voxels in-plane;
* ``cross`` (unseen patient): crops of the DICOM case, every 4 slices and 16 voxels in-plane.

Crops less than half body (HU > -500) are dropped. Reports are templated from the masks
(`mmtok_plugin_ct.reports`): the data carry no radiology reports.
"""

import functools
from pathlib import Path

from mmtok_plugin_ct.datasets import CropSet, crop_boxes, load_case_files, make_crops

DATA = Path(__file__).resolve().parent / "data"
SPACING = [3.0, 1.5, 1.5]
CROP = (8, 64, 64)
TRAIN_SLICES, TEST_SLICES = (0, 22), (22, 30)


@functools.cache
def load_cases():
    nifti = load_case_files("abdomen_nifti", DATA / "example_ct_sm.nii.gz", DATA / "example_seg.nii.gz", SPACING)
    dicom = load_case_files("abdomen_dicom", DATA / "dicom_series", DATA / "example_seg_dicom.nii.gz", SPACING,
                            reader="dicom")
    return nifti, dicom


@functools.cache
def split_crops() -> tuple[CropSet, CropSet, CropSet]:
    """(train, held-out slab, unseen patient) crops; cached (do not modify them)."""
    nifti, dicom = load_cases()
    train = make_crops(nifti, crop_boxes(nifti, CROP, stride=(1, 8, 8), z_range=TRAIN_SLICES), CROP)
    test = make_crops(nifti, crop_boxes(nifti, CROP, stride=(8, 16, 16), z_range=TEST_SLICES), CROP)
    cross = make_crops(dicom, crop_boxes(dicom, CROP, stride=(4, 16, 16)), CROP)
    return train, test, cross

"""Readers and preprocessing of mmtok-plugin-medimg on real files (DICOM of six modalities, an
Aperio slide, PNG / JPEG / MPO photos, a NIfTI volume, MedMNIST) and on bad input built here."""

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
import torch
from PIL import Image

from mmtok import ModalityError
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES, MedicalImage2D
from mmtok_plugin_medimg.preprocessing import (harmonize_channels, load_image, percentile_window, prepare_record,
                                               rescale, resize, to_model_input, voi_window)
from mmtok_plugin_medimg.readers import (DicomError, MedicalFileError, read_dicom, read_image, read_medmnist,
                                         read_nifti_slice, read_slide)

#: the folder of real test images (read-only); every test file path below starts here
DATA = Path(__file__).resolve().parents[1] / "src" / "mmtok_plugin_medimg" / "data"  # the shipped real files
#: the shipped PneumoniaMNIST subset (MedMNIST keys)
MEDMNIST = DATA / "medmnist" / "pneumoniamnist_subset_28.npz"



def in_unit_range(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all()) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


# ------------------------------------------------------------------------------ real DICOM

def test_rg1_monochrome1_is_inverted_lungs_dark():
    record = read_dicom(DATA / "RG1_J2KI.dcm")
    assert record["photometric"] == "MONOCHROME1" and record["imaging_modality"] == "xray"
    assert record["pixels"].shape == (1955, 1841) and record["window_center"] == 15000.0
    assert "pixel_spacing_mm" not in record  # stored as 0.000\0.000: not usable
    shown = prepare_record(record)["pixels"]
    as_mono2 = prepare_record({**record, "photometric": "MONOCHROME2"})["pixels"]
    assert in_unit_range(shown)
    torch.testing.assert_close(shown, 1.0 - as_mono2)
    assert abs(float(shown.mean()) - (1.0 - float(as_mono2.mean()))) < 1e-5
    # after inversion air-filled lungs are dark and the mediastinum / spine bright
    a = resize(shown, (100, 100), fit="stretch")[0, 0]
    lungs = torch.cat([a[35:58, 20:35].ravel(), a[35:58, 65:80].ravel()]).mean()
    mediastinum = a[35:58, 45:55].mean()
    assert float(mediastinum) > float(lungs) + 0.15


def test_ct_small_rescale_and_window():
    record = read_dicom(DATA / "CT_small.dcm")
    assert record["rescale_slope"] == 1.0 and record["rescale_intercept"] == -1024.0
    assert record["imaging_modality"] == "ct" and record["pixels"].dtype == np.int16
    np.testing.assert_allclose(record["pixel_spacing_mm"], [0.661468, 0.661468])
    hu = rescale(record["pixels"], record["rescale_slope"], record["rescale_intercept"])
    assert hu.min() == 128 - 1024 and hu.max() == 2191 - 1024
    # no VOI window in this header: the robust percentile range of the HU values
    assert "window_center" not in record
    out = prepare_record(record)["pixels"][0, 0].numpy()
    np.testing.assert_allclose(out, percentile_window(hu), atol=1e-6)


def test_window_from_header(tmp_path):
    # a soft-tissue window written into CT_small's header is read and applied to the HU values
    ds = pydicom.dcmread(DATA / "CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.save_as(tmp_path / "ct_window.dcm")
    record = read_dicom(tmp_path / "ct_window.dcm")
    assert (record["window_center"], record["window_width"]) == (40.0, 400.0)
    hu = record["pixels"].astype(np.float64) - 1024.0
    expected = np.clip((hu - 39.5) / 399.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(prepare_record(record)["pixels"][0, 0].numpy(), expected, atol=1e-6)
    # real headers: MR_small (600 / 1600) and a multi-valued window (the first one is used)
    mr = read_dicom(DATA / "MR_small.dcm")
    np.testing.assert_allclose(prepare_record(mr)["pixels"][0, 0].numpy(),
                               voi_window(mr["pixels"], 600, 1600), atol=1e-6)
    siemens = read_dicom(DATA / "MR-SIEMENS-DICOM-WithOverlays.dcm")
    assert (siemens["window_center"], siemens["window_width"]) == (450.0, 790.0)


def test_voi_window_linear_definition():
    x = np.array([-1000.0, 0.0, 39.5, 40.0, 239.0, 240.0, 1000.0])
    y = voi_window(x, 40, 400)
    assert y[0] == 0.0 and y[-1] == 1.0 and y[2] == 0.5
    assert np.all(np.diff(y) >= 0)
    np.testing.assert_allclose(voi_window(x, 40, 400, "LINEAR_EXACT")[3], 0.5)
    with pytest.raises(ModalityError, match="VOILUTFunction"):
        voi_window(x, 40, 400, "CUBIC")


def test_emri_frame_option_equals_stack_frame():
    stack = read_dicom(DATA / "emri_small.dcm")
    assert stack["pixels"].shape == (10, 64, 64) and stack["frames"] == 10
    one = read_dicom(DATA / "emri_small.dcm", frame=7)
    assert one["pixels"].shape == (64, 64) and one["frames"] == 1
    np.testing.assert_array_equal(one["pixels"], stack["pixels"][7])
    assert not np.array_equal(one["pixels"], stack["pixels"][6])
    # a stack is not one image; load_image gives every frame as a batch
    with pytest.raises(ModalityError, match=r'10 frames: pick one with the reader option frame .*"frame": k'):
        prepare_record(stack)
    batch = load_image(DATA / "emri_small.dcm")
    assert batch.pixels.shape == (10, 1, 64, 64) and batch.labels == ["mr"] * 10 and batch.body_part == ("HEAD",) * 10
    torch.testing.assert_close(batch.pixels[7:8], MedicalImage2D.from_record(one).pixels)
    with pytest.raises(DicomError, match=r"emri_small.dcm: frame 10 out of range: .*10 frame"):
        read_dicom(DATA / "emri_small.dcm", frame=10)


def test_echo_ybr_full_422_one_frame_to_rgb():
    path = DATA / "echo_color3d_24f_half.dcm"  # 24 frames of the SonoSite echo, JPEG baseline YBR_FULL_422
    record = read_dicom(path, frame=12)
    assert record["pixels"].shape == (240, 320, 3) and record["photometric"] == "RGB"
    assert record["frames"] == 1 and record["imaging_modality"] == "ultrasound"
    # the same frame decoded without colour conversion is YCbCr: converting it gives our RGB
    ds = pydicom.dcmread(path)
    ybr = pydicom.pixels.pixel_array(ds, index=12, raw=True)
    assert np.abs(ybr.astype(int) - record["pixels"].astype(int)).max() > 20
    rgb = pydicom.pixels.convert_color_space(ybr, "YBR_FULL", "RGB")
    assert np.abs(rgb.astype(int) - record["pixels"].astype(int)).max() <= 1
    # a reader that left YBR: the preprocessing converts it
    left = prepare_record({"pixels": ybr, "photometric": "YBR_FULL_422", "bits_stored": 8})["pixels"]
    assert float((left - prepare_record(record)["pixels"]).abs().max()) <= 1.5 / 255


def test_us1_ybr_rct_decodes_to_rgb():
    record = read_dicom(DATA / "US1_J2KR.dcm")
    px = record["pixels"]
    assert px.shape == (480, 640, 3) and record["photometric"] == "RGB"
    grey = (px[..., 0] == px[..., 1]) & (px[..., 1] == px[..., 2])
    assert grey.mean() > 0.5  # the B-mode image is grey in RGB (in YCbCr it would be (Y, 128, 128))
    assert (~grey).sum() > 100  # and the power Doppler overlay is coloured
    image = MedicalImage2D.from_record(record)
    assert image.pixels.shape == (1, 3, 480, 640) and in_unit_range(image.pixels)
    torch.testing.assert_close(image.pixels[0].permute(1, 2, 0), torch.from_numpy(px / 255.0).float())


def test_nm_signed_pixels():
    record = read_dicom(DATA / "JPEG2000_UNC.dcm")
    assert record["pixels"].dtype == np.int16 and record["pixels"].min() == -30 and record["pixels"].max() == 245
    assert record["imaging_modality"] == "nuclear" and record["body_part"] == "WHOLE BODY"
    image = MedicalImage2D.from_record(record)
    assert in_unit_range(image.pixels) and float(image.pixels.min()) == 0.0
    # no window in the header, > 8 bits: the percentile range of the signed values, order kept
    stored = record["pixels"].astype(np.float64)
    out = image.pixels[0, 0].numpy()
    np.testing.assert_allclose(out, percentile_window(stored), atol=1e-6)
    assert out[stored == -30].max() == 0.0 and out[stored < 0].max() <= out[stored > 0].min()
    torch.testing.assert_close(image.pixel_spacing_mm, torch.tensor([[2.26, 2.26]]))


def _enhanced_ct(path: Path, pixels: np.ndarray, slopes, intercepts, spacing) -> None:
    """An enhanced multi-frame CT (uncompressed) with per-frame rescale and shared pixel spacing."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[1:]
    ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = Sequence([Dataset()])
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = list(spacing)
    frames = []
    for slope, intercept in zip(slopes, intercepts):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
        item = Dataset()
        item.PixelValueTransformationSequence = Sequence([transform])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_per_frame_rescale(tmp_path):
    # the real stored values of NEMA's enhanced CT (2 frames); frame 1 gets a different rescale here
    ect = np.load(DATA / "eCT_Supplemental_frames.npz", allow_pickle=False)
    pixels = ect["pixels"][:, ::4, ::4].copy()
    slopes, intercepts = [float(ect["rescale_slope"][0]), 2.0], [float(ect["rescale_intercept"][0]), -2048.0]
    _enhanced_ct(tmp_path / "ect.dcm", pixels, slopes, intercepts, ect["pixel_spacing_mm"])
    stack = read_dicom(tmp_path / "ect.dcm")
    np.testing.assert_array_equal(stack["rescale_slope"], slopes)
    np.testing.assert_array_equal(stack["rescale_intercept"], intercepts)
    np.testing.assert_allclose(stack["pixel_spacing_mm"], ect["pixel_spacing_mm"])
    one = read_dicom(tmp_path / "ect.dcm", frame=1)
    assert (one["rescale_slope"], one["rescale_intercept"]) == (2.0, -2048.0)
    np.testing.assert_array_equal(one["pixels"], pixels[1])
    batch = load_image(tmp_path / "ect.dcm")
    assert batch.pixels.shape == (2, 1, 128, 128) and batch.labels == ["ct", "ct"]
    hu1 = pixels[1] * 2.0 - 2048.0
    np.testing.assert_allclose(batch.pixels[1, 0].numpy(), percentile_window(hu1), atol=1e-6)


# ------------------------------------------------------------------------ slide, photos, NIfTI

def test_svs_region_equals_crop_of_full_read():
    path = DATA / "cmu_small_region.svs"
    full = read_slide(path)
    assert full["pixels"].shape == (2967, 2220, 3) and full["imaging_modality"] == "pathology"
    np.testing.assert_array_equal(full["pixels"], tifffile.imread(path, key=0))
    np.testing.assert_allclose(full["pixel_spacing_mm"], [0.000499, 0.000499])
    for row, col, h, w in [(100, 200, 300, 400), (2900, 2100, 67, 120), (239, 239, 2, 2)]:
        region = read_slide(path, region=[row, col, h, w])["pixels"]
        np.testing.assert_array_equal(region, full["pixels"][row:row + h, col:col + w])
    with pytest.raises(MedicalFileError, match=r"cmu_small_region.svs: region .* outside level 0 of 2967 x 2220"):
        read_slide(path, region=[2900, 0, 100, 10])
    with pytest.raises(MedicalFileError, match="level 3 out of range"):
        read_slide(path, level=3)


def test_png_jpeg_mpo_photos(tmp_path):
    ihc = read_image(DATA / "ihc.png", imaging_modality="pathology")
    assert ihc["pixels"].shape == (512, 512, 3) and ihc["photometric"] == "RGB" and ihc["bits_stored"] == 8
    image = MedicalImage2D.from_record(ihc)
    assert image.labels == ["pathology"]
    torch.testing.assert_close(image.pixels[0].permute(1, 2, 0), torch.from_numpy(ihc["pixels"] / 255.0).float())

    retina = load_image(DATA / "retina.jpg", imaging_modality="fundus", pixel_spacing_mm=0.01)
    assert retina.pixels.shape == (1, 3, 1411, 1411) and in_unit_range(retina.pixels)
    torch.testing.assert_close(retina.pixel_spacing_mm, torch.tensor([[0.01, 0.01]]))

    # an MPO (as iPhones write): frame 0 is the photo, frame 1 a small preview
    photo = Image.open(DATA / "skin_clinical_photo_half.jpg").convert("RGB")
    path = tmp_path / "skin_mpo.jpg"
    photo.save(path, format="MPO", save_all=True, append_images=[photo.resize((64, 57))])
    skin = read_image(path, imaging_modality="clinical_photo")
    with Image.open(path) as mpo:
        assert mpo.format == "MPO" and mpo.n_frames == 2
    assert skin["pixels"].shape == (photo.height, photo.width, 3)

    grey = read_image(DATA / "microaneurysms.png")
    assert grey["pixels"].shape == (102, 102) and grey["photometric"] == "MONOCHROME2"


def test_sixteen_bit_png_and_palette(tmp_path):
    rng = np.random.default_rng(0)
    deep = rng.integers(1000, 40000, size=(20, 30), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    record = read_image(tmp_path / "deep.png")
    assert record["pixels"].dtype == np.uint16 and record["bits_stored"] == 16
    np.testing.assert_array_equal(record["pixels"], deep)
    assert in_unit_range(prepare_record(record)["pixels"])
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png")["pixels"].shape == (8, 8, 3)


def test_nifti_middle_slice():
    import nibabel as nib

    record = read_nifti_slice(DATA / "anatomical.nii", imaging_modality="mr")
    canonical = np.asarray(nib.as_closest_canonical(nib.load(DATA / "anatomical.nii")).get_fdata())
    assert canonical.shape == (33, 41, 25)
    np.testing.assert_allclose(record["pixels"], np.rot90(canonical[:, :, 12]))
    np.testing.assert_allclose(record["pixel_spacing_mm"], [2.0, 2.0])
    sagittal = read_nifti_slice(DATA / "anatomical.nii", slice=5, axis=0)
    np.testing.assert_allclose(sagittal["pixels"], np.rot90(canonical[5]))
    image = MedicalImage2D.from_record(record)
    assert image.pixels.shape == (1, 1, 41, 33) and image.labels == ["mr"] and in_unit_range(image.pixels)
    with pytest.raises(MedicalFileError, match="slice 25 out of range: axis 2 has 25 slices"):
        read_nifti_slice(DATA / "anatomical.nii", slice=25)


def test_medmnist_record_and_sizes():
    record = read_medmnist(MEDMNIST, split="test", index=3)
    with np.load(MEDMNIST, allow_pickle=False) as d:
        np.testing.assert_array_equal(record["pixels"], d["test_images"][3])
        np.testing.assert_array_equal(record["class_label"], d["test_labels"][3])
    assert record["imaging_modality"] == "xray" and record["pixels"].shape == (28, 28)
    image = MedicalImage2D.from_record(record)
    assert image.labels == ["xray"]
    x28 = to_model_input(image, size=(28, 28), channels=1)
    torch.testing.assert_close(x28, image.pixels)  # already 28 x 28 grey: unchanged
    x64 = to_model_input(image, size=64, channels=3)
    assert x64.shape == (1, 3, 64, 64) and in_unit_range(x64)
    assert torch.equal(x64[:, 0], x64[:, 2])
    with pytest.raises(MedicalFileError, match=r"no split 'dev'.*\['test', 'train', 'val'\]"):
        read_medmnist(MEDMNIST, split="dev")


# ------------------------------------------------------------------ channels and resizing

def test_every_file_to_28_and_64_in_unit_range():
    files = [("RG1_J2KI.dcm", {}), ("CT_small.dcm", {}), ("emri_small.dcm", {"frame": 2}),
             ("echo_color3d_24f_half.dcm", {"frame": 0}), ("US1_J2KR.dcm", {}), ("JPEG2000_UNC.dcm", {}),
             ("cmu_small_region.svs", {"region": [0, 0, 512, 512]}), ("ihc.png", {}), ("retina.jpg", {}),
             ("skin_clinical_photo_half.jpg", {}), ("anatomical.nii", {})]
    for name, options in files:
        image = load_image(DATA / name, **options)
        assert in_unit_range(image.pixels), name
        for size in (28, 64):
            for channels in (1, 3):
                for fit in ("pad", "crop", "stretch"):
                    x = to_model_input(image, size=(size, size), channels=channels, fit=fit)
                    assert x.shape == (1, channels, size, size) and in_unit_range(x), (name, size, fit)


def test_harmonize_channels_both_ways():
    torch.manual_seed(0)
    grey = torch.rand(2, 1, 5, 7)
    rgb = harmonize_channels(grey, 3)
    assert rgb.shape == (2, 3, 5, 7) and all(torch.equal(rgb[:, k], grey[:, 0]) for k in range(3))
    torch.testing.assert_close(harmonize_channels(rgb, 1), grey)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    torch.testing.assert_close(harmonize_channels(red, 1), torch.full((1, 1, 4, 4), 0.299))
    with pytest.raises(ModalityError, match="channels must be 1 or 3"):
        harmonize_channels(torch.rand(1, 4, 2, 2), 3)


def test_resize_fits():
    wide = torch.ones(1, 1, 20, 40)
    pad = resize(wide, (28, 28), fit="pad")
    assert pad.shape == (1, 1, 28, 28)
    assert float(pad[0, 0, 0].max()) == 0.0 and float(pad[0, 0, 14].min()) > 0.99  # letterbox rows are 0
    assert float(resize(wide, (64, 64), fit="crop").min()) > 0.99  # the crop covers the frame
    assert float(resize(wide, (64, 64), fit="stretch").min()) > 0.99
    torch.manual_seed(0)
    noise = torch.rand(1, 3, 300, 200)
    small = resize(noise, (28, 28), fit="stretch")
    assert in_unit_range(small) and float(small.std()) < float(noise.std())  # antialiased: averages pixels
    with pytest.raises(ModalityError, match="fit must be"):
        resize(wide, (8, 8), fit="zoom")


# ---------------------------------------------------------------------------- bad input

def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(DATA / "CT_small.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "no_pixels.dcm")
    with pytest.raises(DicomError, match=r"^no_pixels.dcm: no pixel data") as err:
        read_dicom(tmp_path / "no_pixels.dcm")
    assert "\n" not in str(err.value)


def test_not_a_dicom(tmp_path):
    (tmp_path / "notes.dcm").write_text("not an image")
    with pytest.raises(DicomError, match=r"^notes.dcm: not a DICOM file"):
        read_dicom(tmp_path / "notes.dcm")


def test_missing_decoder_names_syntax_and_package(monkeypatch):
    from pydicom.uid import JPEG2000

    decoder = pydicom.pixels.get_decoder(JPEG2000)
    assert decoder.is_available  # installed here; pretend its plugins are missing
    monkeypatch.setattr(decoder, "_available", {})
    assert not decoder.is_available
    with pytest.raises(DicomError) as err:
        read_dicom(DATA / "RG1_J2KI.dcm")
    msg = str(err.value)
    assert msg.startswith("RG1_J2KI.dcm: transfer syntax 'JPEG 2000 Image Compression'") and "\n" not in msg
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in msg


def test_three_d_array_is_not_a_2d_image():
    with pytest.raises(ModalityError, match=r"expected one 2-D image .* found 3-D shape \(5, 32, 32\)"):
        prepare_record({"pixels": np.zeros((5, 32, 32), dtype=np.uint8)})
    with pytest.raises(ModalityError, match="3-D shape"):
        prepare_record({"pixels": np.zeros((32, 32, 3)), "photometric": "MONOCHROME2"})
    with pytest.raises(ModalityError, match="found 3-D shape"):
        MedicalImage2D(pixels=torch.zeros(1, 32, 32))
    # (h, w, 1) and a single leading frame are one image
    assert prepare_record({"pixels": np.zeros((1, 8, 9), dtype=np.uint8)})["pixels"].shape == (1, 1, 8, 9)
    assert prepare_record({"pixels": np.zeros((8, 9, 1), dtype=np.uint8)})["pixels"].shape == (1, 1, 8, 9)


def test_unknown_imaging_modality_label():
    record = {"pixels": np.zeros((8, 8), dtype=np.uint8), "imaging_modality": "sonar"}
    with pytest.raises(ModalityError, match=r"unknown imaging modality 'sonar'; known: xray, ct, mr") as err:
        MedicalImage2D.from_record(record, sample_id="s1")
    assert str(err.value).startswith("sample 's1': imaging_modality: ")
    assert all(label in str(err.value) for label in IMAGING_MODALITIES)
    assert prepare_record({**record, "imaging_modality": "MRI"})["imaging_modality"].tolist() == [2]


def test_corrupt_png(tmp_path):
    data = (DATA / "ihc.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    with pytest.raises(MedicalFileError, match=r"^cut.png: corrupt or truncated image file") as err:
        read_image(tmp_path / "cut.png")
    assert "\n" not in str(err.value)
    (tmp_path / "noise.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(MedicalFileError, match=r"^noise.png: "):
        read_image(tmp_path / "noise.png")


def test_load_image_unknown_suffix(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    (tmp_path / "x.webp2").write_bytes(buf.getvalue())
    with pytest.raises(ModalityError, match=r"x.webp2: unknown image file kind; supported suffixes: .dcm"):
        load_image(tmp_path / "x.webp2")

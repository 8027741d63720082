"""Readers for 2-D medical images. Each ``read_x(path, **options) -> record`` returns the stored
pixels as numpy plus the header fields the preprocessing needs; `mmtok_plugin_medimg.preprocessing.
prepare_record` (through ``MedicalImage2D.from_record``) turns a record into intensities in [0, 1].

Record keys (a key whose value the file does not give is left out):

* ``pixels``: (h, w) grey, (h, w, 3) RGB, or (frames, h, w[, 3]) for a multi-frame DICOM read
  without ``frame``; the stored values (DICOM: before rescale).
* ``photometric``: "MONOCHROME1", "MONOCHROME2" or "RGB" (a YBR colour space pydicom does not
  convert is passed on, e.g. "YBR_PARTIAL_420", and converted by the preprocessing).
* ``bits_stored``: int; ``frames``: int, the number of frames in ``pixels``.
* DICOM: ``rescale_slope``, ``rescale_intercept`` (float, or (frames,) arrays for an enhanced
  multi-frame file read without ``frame``), ``window_center``, ``window_width`` (the first VOI
  window), ``dicom_modality`` (the Modality tag).
* ``imaging_modality`` (label, see `IMAGING_MODALITIES`), ``pixel_spacing_mm`` (2,) row / column
  spacing (only when usable), ``body_part`` (str).

Options are keyword arguments, so a manifest entry passes them as ``"options"``: a frame of a
cine DICOM (``{"frame": 7}``), a slice of a NIfTI volume, a slide region, a MedMNIST image.
"""

import re
from pathlib import Path

import numpy as np

from mmtok import MmtokError
from mmtok_plugin_medimg.modalities import DICOM_MODALITY

__all__ = ["read_dicom", "read_image", "read_slide", "read_nifti_slice", "read_medmnist",
           "MedicalFileError", "DicomError", "DECODER_PACKAGES", "MEDMNIST_MODALITY"]


class MedicalFileError(MmtokError, ValueError):
    """A medical image file that cannot be read (corrupt, truncated, an option out of range)."""


class DicomError(MedicalFileError):
    """A DICOM file without a usable image: no pixel data, no decoder, a frame out of range."""


def _name(path) -> str:
    return Path(path).name


def _spacing(value) -> np.ndarray | None:
    """(2,) float64 row / column spacing in mm from a number or a pair; None when unknown or 0."""
    if value is None:
        return None
    s = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if s.size == 1:
        s = np.repeat(s, 2)
    if s.size != 2:
        raise MedicalFileError(f"pixel_spacing_mm: expected one number or a [row, column] pair, found {value!r}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        return None
    return s


def _labels(record: dict, imaging_modality=None, body_part=None, pixel_spacing_mm=None) -> dict:
    """Add the label fields a caller gave (None: left out)."""
    if imaging_modality is not None:
        record["imaging_modality"] = str(imaging_modality)
    if body_part is not None:
        record["body_part"] = str(body_part)
    spacing = _spacing(pixel_spacing_mm)
    if spacing is not None:
        record["pixel_spacing_mm"] = spacing
    return record


# --------------------------------------------------------------------------------------- DICOM

#: transfer syntax family -> the pip packages that give pydicom a decoder for it
DECODER_PACKAGES: dict[str, str] = {
    "jpeg2000": "pylibjpeg pylibjpeg-openjpeg",
    "jpeg": "pylibjpeg pylibjpeg-libjpeg",  # or pillow for the lossy 8-bit JPEG baseline
    "jpegls": "pylibjpeg pylibjpeg-libjpeg",
    "rle": "pylibjpeg pylibjpeg-rle",
}


def _decoder_package(uid) -> str:
    """The pip package(s) to install for a transfer syntax pydicom cannot decode here."""
    from pydicom import uid as uids

    if uid in uids.JPEG2000TransferSyntaxes:
        return DECODER_PACKAGES["jpeg2000"]
    if uid in uids.JPEGLSTransferSyntaxes:
        return DECODER_PACKAGES["jpegls"]
    if uid in uids.JPEGTransferSyntaxes or uid in (uids.JPEGLossless, uids.JPEGLosslessSV1):
        return DECODER_PACKAGES["jpeg"]
    if uid in uids.RLETransferSyntaxes:
        return DECODER_PACKAGES["rle"]
    return "python-gdcm"


def _decoder(ds, name: str):
    """pydicom's decoder for the file's transfer syntax, or a `DicomError` naming what to install."""
    import pydicom.pixels

    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid is None:
        raise DicomError(f"{name}: no TransferSyntaxUID in the file meta information, so the pixel data "
                         "cannot be interpreted")
    try:
        decoder = pydicom.pixels.get_decoder(uid)
    except NotImplementedError:
        raise DicomError(f"{name}: transfer syntax '{uid.name}' ({uid}) cannot be decoded: pydicom has no "
                         "decoder for it (video and JPIP syntaxes are not images)") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "none listed"
        raise DicomError(f"{name}: transfer syntax '{uid.name}' ({uid}) needs a pixel decoder that is not "
                         f"installed: pip install {_decoder_package(uid)} (pydicom's decoder plugins: {missing})")
    return decoder


def _first(value) -> float | None:
    """First value of a possibly multi-valued DICOM number (WindowCenter 40\\400 -> 40.0)."""
    if value is None or isinstance(value, (int, float, str)):
        return None if value is None else float(value)
    return float(value[0]) if len(value) else None


def _functional(ds, frame: int, sequence: str, keyword: str):
    """A value from an enhanced multi-frame file's functional groups: the per-frame group of
    ``frame`` first, then the shared group; None when neither has it."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is None or len(seq) <= index or sequence not in seq[index]:
            continue
        entries = seq[index].get(sequence)
        if len(entries) and keyword in entries[0]:
            return entries[0].get(keyword)
    return None


def _per_frame(ds, frames: list[int], sequence: str, keyword: str, default):
    """One float per frame from the functional groups (classic tag as fallback)."""
    values = []
    for f in frames:
        value = _functional(ds, f, sequence, keyword)
        value = ds.get(keyword, default) if value is None else value
        values.append(_first(value))
    return values


def read_dicom(path, frame: int | None = None) -> dict:
    """A DICOM image through pydicom. ``frame`` (0-based) decodes one frame of a multi-frame file
    (only that frame); without it a multi-frame file gives all frames, (frames, h, w[, 3]).

    Colour is returned as RGB (pydicom converts YBR_FULL / YBR_FULL_422; JPEG 2000 decoders undo
    YBR_RCT / YBR_ICT); PALETTE COLOR is expanded through its lookup table. Rescale and window
    come from the classic tags or, in an enhanced multi-frame file, from the per-frame (else
    shared) functional groups.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    name = _name(path)
    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError:
        raise DicomError(f"{name}: not a DICOM file (no 'DICM' preamble; a headerless file cannot be read "
                         "safely)") from None
    except (OSError, EOFError, ValueError, KeyError) as err:
        raise DicomError(f"{name}: cannot parse the DICOM header: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        what = f" (SOP class {sop.name})" if sop is not None else ""
        raise DicomError(f"{name}: no pixel data: the file has no PixelData element{what}, so it holds no image")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is not None:
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= int(frame) < n_frames:
            raise DicomError(f"{name}: frame {frame!r} out of range: the file has {n_frames} frame(s), "
                             f"indices 0..{n_frames - 1}")
        frame = int(frame)
    decoder = _decoder(ds, name)
    uid = ds.file_meta.TransferSyntaxUID
    try:
        pixels, meta = decoder.as_array(ds, index=frame)
    except Exception as err:  # noqa: BLE001 - any decoder failure is this file's problem, said in one line
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DicomError(f"{name}: cannot decode the pixel data ({uid.name}): {type(err).__name__}: {msg}") from None
    photometric = str(getattr(meta["photometric_interpretation"], "value", meta["photometric_interpretation"]))
    bits_stored = int(meta.get("bits_stored", ds.get("BitsStored", 8 * pixels.dtype.itemsize)))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
        photometric = "RGB"
        bits_stored = int(ds.RedPaletteColorLookupTableDescriptor[2])

    frames = [frame] if frame is not None else list(range(n_frames))
    record = {"pixels": pixels, "photometric": photometric, "bits_stored": bits_stored, "frames": len(frames),
              "dicom_modality": str(ds.get("Modality", ""))}
    slopes = _per_frame(ds, frames, "PixelValueTransformationSequence", "RescaleSlope", 1.0)
    intercepts = _per_frame(ds, frames, "PixelValueTransformationSequence", "RescaleIntercept", 0.0)
    centers = _per_frame(ds, frames, "FrameVOILUTSequence", "WindowCenter", None)
    widths = _per_frame(ds, frames, "FrameVOILUTSequence", "WindowWidth", None)
    one = len(frames) == 1 or "PerFrameFunctionalGroupsSequence" not in ds
    record["rescale_slope"] = slopes[0] if one else np.asarray(slopes, dtype=np.float64)
    record["rescale_intercept"] = intercepts[0] if one else np.asarray(intercepts, dtype=np.float64)
    if all(c is not None for c in centers) and all(w is not None for w in widths):
        record["window_center"] = centers[0] if one else np.asarray(centers, dtype=np.float64)
        record["window_width"] = widths[0] if one else np.asarray(widths, dtype=np.float64)
    if "VOILUTFunction" in ds:
        record["voi_lut_function"] = str(ds.VOILUTFunction)

    label = DICOM_MODALITY.get(record["dicom_modality"].upper())
    if label is not None:
        record["imaging_modality"] = label
    spacing = ds.get("PixelSpacing") or _functional(ds, frames[0], "PixelMeasuresSequence", "PixelSpacing")
    spacing = _spacing(None if spacing is None else [float(v) for v in spacing])
    if spacing is not None:
        record["pixel_spacing_mm"] = spacing
    if ds.get("BodyPartExamined"):
        record["body_part"] = str(ds.BodyPartExamined)
    return record


# --------------------------------------------------------------------------- PNG / JPEG / BMP

def read_image(path, imaging_modality: str | None = None, body_part: str | None = None,
               pixel_spacing_mm: float | list | None = None) -> dict:
    """A PNG / JPEG / BMP through Pillow: (h, w) grey or (h, w, 3) RGB. The EXIF orientation is
    applied; an MPO (a phone's multi-picture JPEG) gives its frame 0; palette images become RGB,
    LA / RGBA lose their alpha; 16-bit grey PNG stays 16-bit (uint16)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = _name(path)
    try:
        with Image.open(str(path)) as img:
            img.load()  # frame 0 of an MPO
            img = ImageOps.exif_transpose(img)
            if img.mode in ("1", "LA", "La"):
                img = img.convert("L")
            elif img.mode not in ("L", "RGB", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"):
                img = img.convert("RGB")  # palette, RGBA, CMYK, YCbCr, ...: alpha dropped
            pixels = np.asarray(img)
    except UnidentifiedImageError:
        raise MedicalFileError(f"{name}: not an image Pillow can read (PNG, JPEG, BMP expected)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise MedicalFileError(f"{name}: corrupt or truncated image file: {type(err).__name__}: {msg}") from None
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    bits = 8 * pixels.dtype.itemsize
    record = {"pixels": pixels, "photometric": "RGB" if pixels.ndim == 3 else "MONOCHROME2", "bits_stored": bits,
              "frames": 1}
    return _labels(record, imaging_modality, body_part, pixel_spacing_mm)


# ------------------------------------------------------------------------------ TIFF / SVS

def _tiled_region(page, row: int, col: int, height: int, width: int) -> np.ndarray:
    """Decode only the tiles of a tiled TIFF page that cover the region; (height, width[, s])."""
    tl, tw = page.tilelength, page.tilewidth
    across = -(-page.imagewidth // tw)
    samples = page.samplesperpixel
    out = np.zeros((height, width, samples), dtype=page.dtype)
    fh = page.parent.filehandle
    decode = page.decode  # built once (building it may move the file position)
    for ty in range(row // tl, (row + height - 1) // tl + 1):
        for tx in range(col // tw, (col + width - 1) // tw + 1):
            index = ty * across + tx
            if not page.databytecounts[index]:
                continue  # an empty tile: zeros
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
            tile = decode(data, index, jpegtables=page.jpegtables)[0]
            tile = tile.reshape(tile.shape[-3:])  # (tl, tw, samples)
            r0, c0 = ty * tl, tx * tw
            rs, re_ = max(row, r0), min(row + height, r0 + tile.shape[0])
            cs, ce = max(col, c0), min(col + width, c0 + tile.shape[1])
            out[rs - row:re_ - row, cs - col:ce - col] = tile[rs - r0:re_ - r0, cs - c0:ce - c0]
    return out[..., 0] if samples == 1 else out


def read_slide(path, level: int = 0, region: list[int] | None = None, imaging_modality: str = "pathology",
               body_part: str | None = None, pixel_spacing_mm: float | list | None = None) -> dict:
    """A TIFF / Aperio SVS image or slide region through tifffile. ``level``: pyramid level of the
    first series (0 = full resolution); ``region`` = [row, col, height, width] in that level's
    pixels. A tiled page decodes only the tiles the region touches; a striped page is read whole
    and cropped. ``pixel_spacing_mm`` defaults to the SVS ``MPP`` (scaled to the level)."""
    import tifffile

    name = _name(path)
    try:
        tif = tifffile.TiffFile(str(path))
    except (tifffile.TiffFileError, OSError, ValueError) as err:
        raise MedicalFileError(f"{name}: not a readable TIFF: {type(err).__name__}: {err}") from None
    with tif:
        levels = tif.series[0].levels
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < len(levels):
            raise MedicalFileError(f"{name}: level {level!r} out of range: the slide has {len(levels)} level(s), "
                                   f"0..{len(levels) - 1}")
        page = levels[level].keyframe
        height_full, width_full = int(page.imagelength), int(page.imagewidth)
        if region is None:
            row, col, height, width = 0, 0, height_full, width_full
        else:
            if len(region) != 4 or any(int(v) != v for v in region):
                raise MedicalFileError(f"{name}: region must be [row, col, height, width] integers, found {region!r}")
            row, col, height, width = (int(v) for v in region)
            if row < 0 or col < 0 or height <= 0 or width <= 0 or row + height > height_full \
                    or col + width > width_full:
                raise MedicalFileError(f"{name}: region [row {row}, col {col}, height {height}, width {width}] lies "
                                       f"outside level {level} of {height_full} x {width_full} pixels")
        try:
            if page.is_tiled and len(levels[level].pages) == 1 and page.planarconfig == 1:
                pixels = _tiled_region(page, row, col, height, width)
            else:
                pixels = levels[level].asarray()[row:row + height, col:col + width]
        except Exception as err:  # noqa: BLE001 - a broken tile / codec is this file's problem
            raise MedicalFileError(f"{name}: cannot decode level {level}: {type(err).__name__}: {err}") from None
        mpp = re.search(r"MPP\s*=\s*([0-9.]+)", tif.pages[0].description or "") if tif.is_svs else None
        base_width = int(levels[0].keyframe.imagewidth)
        photometric_tag = int(page.photometric)
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[-1] > 3:
        pixels = pixels[..., :3]  # RGBA / extra samples
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim != 2 and not (pixels.ndim == 3 and pixels.shape[-1] == 3):
        raise MedicalFileError(f"{name}: expected a 2-D grey or RGB image, found shape {pixels.shape}")
    photometric = "RGB" if pixels.ndim == 3 else ("MONOCHROME1" if photometric_tag == 0 else "MONOCHROME2")
    record = {"pixels": pixels, "photometric": photometric, "bits_stored": 8 * pixels.dtype.itemsize, "frames": 1}
    if pixel_spacing_mm is None and mpp is not None:
        pixel_spacing_mm = float(mpp.group(1)) / 1000.0 * base_width / width_full
    return _labels(record, imaging_modality, body_part, pixel_spacing_mm)


# ------------------------------------------------------------------------------------- NIfTI

def read_nifti_slice(path, slice: int | None = None, axis: int = 2, imaging_modality: str | None = None,
                     body_part: str | None = None) -> dict:
    """One 2-D slice of a 3-D NIfTI volume through nibabel (scaling applied). The volume is put in
    the closest canonical (RAS) orientation first, so ``axis`` 0 / 1 / 2 is sagittal / coronal /
    axial; the slice is rotated 90 degrees so its second remaining axis points up. ``slice``
    defaults to the middle one. A 2-D NIfTI is its own slice (rotated the same way, not
    reoriented). Pixels: (h, w) float32; spacing from the affine's voxel sizes."""
    import nibabel as nib

    name = _name(path)
    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - nibabel raises several kinds on a bad file
        raise MedicalFileError(f"{name}: not a readable NIfTI: {type(err).__name__}: {err}") from None
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise MedicalFileError(f"{name}: expected a 2-D image or a 3-D volume, found shape {img.shape} "
                               "(a time series / multi-volume file)")
    if axis not in (0, 1, 2):
        raise MedicalFileError(f"{name}: axis must be 0, 1 or 2, found {axis!r}")
    if len(shape) == 2:
        pixels = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
        sizes = nib.affines.voxel_sizes(img.affine)[:2]
    else:
        if img.ndim != 3:
            img = type(img)(np.asanyarray(img.dataobj).reshape(shape), img.affine, img.header)
        img = nib.as_closest_canonical(img)
        n = img.shape[axis]
        index = n // 2 if slice is None else slice
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise MedicalFileError(f"{name}: slice {slice!r} out of range: axis {axis} has {n} slices, 0..{n - 1}")
        cut = [np.s_[:]] * 3
        cut[axis] = int(index)
        pixels = np.asarray(img.dataobj[tuple(cut)], dtype=np.float32)
        sizes = [float(z) for i, z in enumerate(nib.affines.voxel_sizes(img.affine)) if i != axis]
    pixels = np.ascontiguousarray(np.rot90(pixels))  # (a, b) -> (b, a): rows follow the second axis, up = +
    zooms = [float(sizes[1]), float(sizes[0])]
    record = {"pixels": pixels, "photometric": "MONOCHROME2", "bits_stored": 32, "frames": 1}
    return _labels(record, imaging_modality, body_part, zooms)


# ---------------------------------------------------------------------------------- MedMNIST

#: MedMNIST dataset name (file-name prefix) -> imaging modality
MEDMNIST_MODALITY: dict[str, str] = {
    "pneumoniamnist": "xray", "chestmnist": "xray", "pathmnist": "pathology", "tissuemnist": "pathology",
    "bloodmnist": "pathology", "dermamnist": "dermatoscopy", "breastmnist": "ultrasound", "octmnist": "oct",
    "retinamnist": "fundus", "organamnist": "ct", "organcmnist": "ct", "organsmnist": "ct",
}


def read_medmnist(path, split: str = "test", index: int = 0, imaging_modality: str | None = None) -> dict:
    """Image ``index`` of a MedMNIST ``.npz`` split (``{split}_images`` (n, h, w[, 3]) uint8 and
    ``{split}_labels`` (n, k)). The imaging modality comes from the file name (``pneumoniamnist_*``
    -> xray, see `MEDMNIST_MODALITY`) unless given. Extra key ``class_label``: (k,) int64."""
    name = _name(path)
    try:
        data = np.load(str(path), allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise MedicalFileError(f"{name}: not a readable .npz: {type(err).__name__}: {err}") from None
    with data:
        key = f"{split}_images"
        if key not in data.files:
            splits = sorted(k[:-len("_images")] for k in data.files if k.endswith("_images"))
            raise MedicalFileError(f"{name}: no split {split!r} (key {key!r}); the file has splits {splits}")
        images = data[key]
        labels = data[f"{split}_labels"] if f"{split}_labels" in data.files else None
    if images.ndim not in (3, 4):
        raise MedicalFileError(f"{name}: {key}: expected (n, h, w) or (n, h, w, 3), found shape {images.shape}")
    n = images.shape[0]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise MedicalFileError(f"{name}: index {index!r} out of range: split {split!r} has {n} images, 0..{n - 1}")
    pixels = np.ascontiguousarray(images[int(index)])
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    record = {"pixels": pixels, "photometric": "RGB" if pixels.ndim == 3 else "MONOCHROME2",
              "bits_stored": 8 * pixels.dtype.itemsize, "frames": 1}
    if labels is not None:
        record["class_label"] = np.atleast_1d(np.asarray(labels[int(index)], dtype=np.int64))
    if imaging_modality is None:
        stem = name.lower()
        imaging_modality = next((m for prefix, m in MEDMNIST_MODALITY.items() if stem.startswith(prefix)), None)
    return _labels(record, imaging_modality)

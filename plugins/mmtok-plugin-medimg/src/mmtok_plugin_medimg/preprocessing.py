"""Per-modality preprocessing of 2-D medical images, in one place.

A reader record (`mmtok_plugin_medimg.readers`) holds stored values; `prepare_record` turns it
into `MedicalImage2D` fields with intensities in [0, 1]:

1. refuse what is not one 2-D image: a frame stack (> 1 frame) or a 3-D array other than
   (h, w, 3) / (h, w, 1);
2. YBR -> RGB when a reader left a YBR colour space (pydicom's colour conversion);
3. rescale: stored * RescaleSlope + RescaleIntercept (CT: Hounsfield units);
4. intensity window to [0, 1]: the header's VOI window when present (DICOM PS3.3 C.11.2.1.2,
   LINEAR / LINEAR_EXACT / SIGMOID); else integer colour and <= 8-bit grey data / (2**bits - 1)
   (8-bit: / 255); else (> 8-bit grey: CT, MR, NM, 16-bit PNG; float data: NIfTI) the
   0.5-99.5 % percentile range;
5. MONOCHROME1 (white = low values, e.g. CR) inverted.

Then `harmonize_channels` and `resize` (or `to_model_input`, both) bring a batch to a model's
fixed channel count and size. `load_image` reads any supported file and prepares it.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmtok import ModalityError
from mmtok_plugin_medimg import readers
from mmtok_plugin_medimg.modalities import MedicalImage2D, modality_index

__all__ = ["prepare_record", "rescale", "voi_window", "percentile_window", "harmonize_channels", "resize",
           "to_model_input", "load_image", "READERS_BY_SUFFIX"]

#: ITU-R BT.601 luma weights (R, G, B)
LUMA_601 = (0.299, 0.587, 0.114)


def rescale(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """DICOM modality rescale: ``stored * slope + intercept`` as float64 (same shape)."""
    return np.asarray(stored, dtype=np.float64) * float(slope) + float(intercept)


def voi_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1] (same shape, float64).

    LINEAR: 0 below ``c - 0.5 - (w - 1) / 2``, 1 above ``c - 0.5 + (w - 1) / 2``, linear between;
    LINEAR_EXACT: ``(x - c) / w + 0.5`` clipped; SIGMOID: ``1 / (1 + exp(-4 (x - c) / w))``.
    """
    x = np.asarray(values, dtype=np.float64)
    c, w = float(center), float(width)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    if function != "LINEAR":
        raise ModalityError(f"VOILUTFunction: expected LINEAR, LINEAR_EXACT or SIGMOID, found {function!r}")
    if w < 1:
        raise ModalityError(f"WindowWidth: expected >= 1 for a LINEAR window, found {w}")
    if w == 1:
        return (x > c - 0.5).astype(np.float64)
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def percentile_window(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Robust range to [0, 1]: the ``low`` / ``high`` percentiles map to 0 / 1, clipped (same
    shape). A constant image maps to 0."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(x, [low, high])
    if hi <= lo:  # (nearly) constant beyond the percentiles: fall back to the full range
        lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _scalar(record: dict, key: str, default=None) -> float | None:
    """A header number that may arrive as a float, a 1-element array or list (None: absent)."""
    value = record.get(key, default)
    if value is None:
        return None
    a = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if a.size != 1:
        raise ModalityError(f"record field {key!r}: expected one value for one image, found {a.size} "
                            "(per-frame values: pick a frame with the reader option frame)")
    return float(a[0])


def _frames_error(n: int) -> ModalityError:
    return ModalityError(f'{n} frames: pick one with the reader option frame (manifest: "options": {{"frame": k}})')


def _one_image(pixels: np.ndarray, photometric: str, frames: int) -> np.ndarray:
    """Stored pixels as (h, w, c), c in {1, 3}, or a ModalityError saying why it is not one image."""
    if frames > 1:
        raise _frames_error(frames)
    if pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[0] == 1 and pixels.shape[-1] not in (1, 3)):
        if pixels.shape[0] != 1:
            raise _frames_error(pixels.shape[0])
        pixels = pixels[0]
    if pixels.ndim == 2:
        return pixels[..., None]
    colour = photometric == "RGB" or photometric.startswith("YBR")
    if pixels.ndim == 3 and (pixels.shape[-1] == 1 or (pixels.shape[-1] == 3 and colour)):
        return pixels
    raise ModalityError(f"pixels: expected one 2-D image (h, w), (h, w, 3) or (h, w, 1), found {pixels.ndim}-D "
                        f"shape {tuple(pixels.shape)} (photometric {photometric}); a volume or frame stack is not "
                        "one 2-D image: take a slice or a frame (the readers' 'slice' / 'frame' options)")


def prepare_record(record: dict) -> dict:
    """`MedicalImage2D` fields of one image from a reader record (see the module docstring).

    Returns {"pixels": (1, c, h, w) float32 in [0, 1] (c = 1 grey, 3 RGB), "imaging_modality":
    (1,) int64 or None, "pixel_spacing_mm": (1, 2) float32 or None, "body_part": str or None}.
    """
    if "pixels" not in record:
        raise ModalityError(f"record: no 'pixels' field (found {sorted(record)})")
    raw = record["pixels"]
    pixels = raw.numpy() if isinstance(raw, Tensor) else np.asarray(raw)
    if pixels.dtype.kind not in "biuf":
        raise ModalityError(f"pixels: expected numbers, found dtype {pixels.dtype}")
    if pixels.dtype.kind == "b":
        pixels = pixels.astype(np.uint8)
    default_pi = "RGB" if pixels.ndim == 3 and pixels.shape[-1] == 3 else "MONOCHROME2"
    photometric = str(record.get("photometric") or default_pi).strip().upper()
    frames = int(_scalar(record, "frames", 1))
    pixels = _one_image(pixels, photometric, frames)  # (h, w, c)
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ModalityError(f"pixels: empty image of shape {tuple(pixels.shape[:2])}")

    if photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        if photometric not in ("YBR_FULL", "YBR_FULL_422"):
            raise ModalityError(f"photometric: {photometric} is converted to RGB by the decoder, not here "
                                "(expected RGB, MONOCHROME1/2, YBR_FULL or YBR_FULL_422)")
        pixels = convert_color_space(pixels, "YBR_FULL", "RGB")
        photometric = "RGB"
    if photometric not in ("RGB", "MONOCHROME1", "MONOCHROME2"):
        raise ModalityError(f"photometric: expected MONOCHROME1, MONOCHROME2, RGB or YBR_FULL(_422), found "
                            f"{photometric!r}")

    bits = record.get("bits_stored")
    bits = int(_scalar(record, "bits_stored")) if bits is not None else 8 * pixels.dtype.itemsize
    slope, intercept = _scalar(record, "rescale_slope", 1.0), _scalar(record, "rescale_intercept", 0.0)
    values = rescale(pixels, slope, intercept)
    center, width = _scalar(record, "window_center"), _scalar(record, "window_width")
    if center is not None and width is not None and width > 0:
        out = voi_window(values, center, width, str(record.get("voi_lut_function") or "LINEAR"))
    elif pixels.dtype.kind in "iu" and (photometric == "RGB" or bits <= 8):
        out = np.clip(values / (2.0 ** bits - 1.0), 0.0, 1.0)  # colour keeps its absolute scale
    else:
        out = percentile_window(values)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    if not np.all(np.isfinite(out)):
        raise ModalityError("pixels: non-finite values (NaN / inf) in the image")

    tensor = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32))[None]
    label = record.get("imaging_modality")
    if isinstance(label, np.ndarray):
        label = label.item() if label.size == 1 else label.tolist()
    if label is None or label == "":
        modality = None
    elif isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        modality = torch.tensor([int(label)], dtype=torch.long)
    else:
        modality = torch.tensor([modality_index(str(label), where="imaging_modality: ")], dtype=torch.long)
    spacing = record.get("pixel_spacing_mm")
    if spacing is not None:
        s = np.atleast_1d(np.asarray(spacing, dtype=np.float32)).ravel()
        if s.size == 1:
            s = np.repeat(s, 2)
        if s.size != 2:
            raise ModalityError(f"pixel_spacing_mm: expected (2,) row / column spacing, found {s.size} values")
        spacing = torch.from_numpy(np.clip(s, 0.0, None))[None]
    body = record.get("body_part")
    body = None if body is None else (str(body.item()) if isinstance(body, np.ndarray) else str(body)) or None
    return {"pixels": tensor, "imaging_modality": modality, "pixel_spacing_mm": spacing, "body_part": body}


def harmonize_channels(x: Tensor, channels: int) -> Tensor:
    """(b, c, h, w) -> (b, channels, h, w): grey -> RGB by replication, RGB -> grey by ITU-R 601
    luma (0.299 R + 0.587 G + 0.114 B)."""
    c = x.shape[1]
    if channels not in (1, 3) or c not in (1, 3):
        raise ModalityError(f"harmonize_channels: channels must be 1 or 3, found {c} -> {channels}")
    if c == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor(LUMA_601, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _size(size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise ModalityError(f"size: expected positive (height, width), found {size!r}")
    return int(h), int(w)


def _interpolate(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize(x: Tensor, size: tuple[int, int], fit: str = "pad") -> Tensor:
    """(b, c, h, w) -> (b, c, *size), antialiased bilinear, values kept in [0, 1].

    fit "pad": keep the aspect ratio, scale to fit inside, pad with 0 (centred); "crop": keep the
    aspect ratio, scale to cover, centre crop; "stretch": scale each axis to the size.
    """
    th, tw = _size(size)
    h, w = x.shape[-2:]
    if fit == "stretch":
        return _interpolate(x, (th, tw)).clamp(0.0, 1.0)
    if fit not in ("pad", "crop"):
        raise ModalityError(f"resize: fit must be 'pad', 'crop' or 'stretch', found {fit!r}")
    scale = min(th / h, tw / w) if fit == "pad" else max(th / h, tw / w)
    sh, sw = (max(1, round(h * scale)), max(1, round(w * scale)))
    if fit == "pad":
        sh, sw = min(sh, th), min(sw, tw)
    y = _interpolate(x, (sh, sw)).clamp(0.0, 1.0)
    if fit == "crop":
        top, left = (sh - th) // 2, (sw - tw) // 2
        return y[..., top:top + th, left:left + tw].contiguous()
    top, left = (th - sh) // 2, (tw - sw) // 2
    return F.pad(y, (left, tw - sw - left, top, th - sh - top), value=0.0)


def to_model_input(images: MedicalImage2D, size=(64, 64), channels: int = 3, fit: str = "pad") -> Tensor:
    """A model's input from a batch: (b, channels, *size) float in [0, 1] (`harmonize_channels`
    then `resize`). ``size`` may be one int (square); 28 x 28 and 64 x 64 are the usual ones."""
    pixels = images.pixels if isinstance(images, MedicalImage2D) else images
    return resize(harmonize_channels(pixels.float(), channels), _size(size), fit)


#: file suffix -> reader `load_image` uses (a file with another suffix is tried as DICOM when it
#: has the 'DICM' marker at byte 128)
READERS_BY_SUFFIX = {".dcm": readers.read_dicom, ".dicom": readers.read_dicom, ".png": readers.read_image,
                     ".jpg": readers.read_image, ".jpeg": readers.read_image, ".bmp": readers.read_image,
                     ".svs": readers.read_slide, ".tif": readers.read_slide, ".tiff": readers.read_slide,
                     ".nii": readers.read_nifti_slice, ".nii.gz": readers.read_nifti_slice,
                     ".npz": readers.read_medmnist}


def _reader_for(path: Path):
    name = path.name.lower()
    for suffix in sorted(READERS_BY_SUFFIX, key=len, reverse=True):
        if name.endswith(suffix):
            return READERS_BY_SUFFIX[suffix]
    with open(path, "rb") as fh:
        fh.seek(128)
        if fh.read(4) == b"DICM":
            return readers.read_dicom
    raise ModalityError(f"{path.name}: unknown image file kind; supported suffixes: {', '.join(READERS_BY_SUFFIX)} "
                        "(or a DICOM with its 'DICM' preamble)")


def load_image(path, **options) -> MedicalImage2D:
    """Read any supported file (by suffix, see `READERS_BY_SUFFIX`) and prepare it: one image
    (1, c, h, w); a multi-frame DICOM without ``frame`` gives every frame, (frames, c, h, w).
    ``options`` are the reader's keyword options (``frame``, ``slice``, ``region``, ...)."""
    path = Path(path)
    record = _reader_for(path)(path, **options)
    n = int(record.get("frames", 1) or 1)
    if n == 1:
        return MedicalImage2D.from_record(record, sample_id=path.name)
    per_frame = ("pixels", "rescale_slope", "rescale_intercept", "window_center", "window_width")
    parts = []
    for k in range(n):
        one = dict(record, frames=1)
        for key in per_frame:
            value = record.get(key)
            if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == n:
                one[key] = value[k]
        parts.append(prepare_record(one))

    def cat(key):
        return None if parts[0][key] is None else torch.cat([p[key] for p in parts])

    return MedicalImage2D(pixels=cat("pixels"), imaging_modality=cat("imaging_modality"),
                          pixel_spacing_mm=cat("pixel_spacing_mm"),
                          body_part=None if parts[0]["body_part"] is None else parts[0]["body_part"])

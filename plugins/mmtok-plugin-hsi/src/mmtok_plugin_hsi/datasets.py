"""Loaders of the three real scenes shipped in ``mmtok_plugin_hsi/data`` (provenance: ``data/DATA.md``).

- `load_indian_pines`: AVIRIS Indian Pines, cube (200, 145, 145), 16 classes (0 = unlabelled).
- `load_jasper_ridge`: AVIRIS Jasper Ridge crop, cube (198, 100, 100), abundances of 4 endmembers.
- `load_houston2013`: Houston 2013 labelled pixel vectors, HSI (2832, 144) + LiDAR features (2832, 21).

Cubes are bands first, ``(bands, h, w)`` float32, with wavelengths ``(bands,)`` in nm, strictly
increasing. The numpy files hold ``(h, w, bands)``; the loaders transpose.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import scipy.io

from mmtok import MmtokError

__all__ = ["DATA_DIR", "Scene", "PixelSet", "data_file", "load_indian_pines", "load_jasper_ridge",
           "load_houston2013", "indian_pines_wavelengths", "INDIAN_PINES_SCALE", "INDIAN_PINES_TYPO_BANDS"]

#: folder of the shipped data files
DATA_DIR = Path(__file__).parent / "data"

#: Indian Pines digital numbers are divided by this (a scale, not a radiometric calibration)
INDIAN_PINES_SCALE = 1e4

#: indices (in the shipped band order) of the two wavelengths that look like typos in tensorly's list
INDIAN_PINES_TYPO_BANDS = (170, 171)


@dataclasses.dataclass
class Scene:
    """A hyperspectral scene.

    cube: (bands, h, w) float32. wavelength_nm: (bands,) float64, strictly increasing.
    labels: (h, w) int64 with 0 = unlabelled, or None. class_names: index = label value.
    extra: anything else the scene ships (abundance maps, endmembers, band indices, ...).
    """

    cube: np.ndarray
    wavelength_nm: np.ndarray
    labels: np.ndarray | None
    class_names: list[str]
    name: str
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.cube.ndim != 3:
            raise MmtokError(f"scene {self.name!r}: cube must be (bands, h, w), found shape {self.cube.shape}")
        _check_wavelengths(self.name, self.wavelength_nm, self.cube.shape[0])
        if self.labels is not None and self.labels.shape != self.cube.shape[1:]:
            raise MmtokError(f"scene {self.name!r}: labels must be (h, w) = {self.cube.shape[1:]}, "
                             f"found {self.labels.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w)."""
        return self.cube.shape[1], self.cube.shape[2]

    def spectra(self, flat_idx: np.ndarray) -> np.ndarray:
        """Spectra of the pixels at flat (row-major) indices: (n, bands) float32."""
        return self.cube.reshape(self.cube.shape[0], -1)[:, np.asarray(flat_idx)].T.copy()


@dataclasses.dataclass
class PixelSet:
    """Labelled pixel vectors without pixel coordinates.

    hsi: (n, bands) float32. lidar: (n, 21) float32. labels: (n,) int64, 1..num_classes.
    class_names: index = label value, 0 = "Unlabelled". wavelength_nm: (bands,) nominal.
    """

    hsi: np.ndarray
    lidar: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    wavelength_nm: np.ndarray
    name: str
    extra: dict = dataclasses.field(default_factory=dict)


def data_file(name: str) -> Path:
    """Path of a shipped data file; a clear error if the install lacks it."""
    path = DATA_DIR / name
    if not path.is_file():
        raise MmtokError(f"data file {name!r}: expected in {DATA_DIR}, not found (reinstall mmtok-plugin-hsi)")
    return path


def _check_wavelengths(name: str, wavelength_nm: np.ndarray, bands: int) -> None:
    if wavelength_nm.shape != (bands,):
        raise MmtokError(f"scene {name!r}: wavelength_nm must have shape ({bands},), found {wavelength_nm.shape}")
    if not np.all(np.diff(wavelength_nm) > 0):
        i = int(np.argmax(np.diff(wavelength_nm) <= 0))
        raise MmtokError(f"scene {name!r}: wavelength_nm must be strictly increasing, found "
                         f"{wavelength_nm[i]:.2f} then {wavelength_nm[i + 1]:.2f} at band {i}")


def indian_pines_wavelengths(shipped_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repair tensorly's Indian Pines wavelength list: (wavelength_nm sorted, band order).

    Bands 170, 171 (2260.22, 2270.15 nm between 2202.30 and 2232.07) are replaced by linear
    interpolation between bands 169 and 172 (2212.22, 2222.15). The two remaining inversions
    (bands 30/31, 93/94) are real overlaps between AVIRIS spectrometers; a stable sort by
    wavelength removes them. ``order`` indexes the shipped bands: ``cube[order]`` is sorted.
    """
    wl = np.asarray(shipped_nm, dtype=np.float64).copy()
    lo, hi = INDIAN_PINES_TYPO_BANDS[0] - 1, INDIAN_PINES_TYPO_BANDS[-1] + 1
    span = hi - lo
    for i in INDIAN_PINES_TYPO_BANDS:
        wl[i] = wl[lo] + (wl[hi] - wl[lo]) * (i - lo) / span
    order = np.argsort(wl, kind="stable")
    wl = wl[order]
    if not np.all(np.diff(wl) > 0):
        raise MmtokError("Indian Pines wavelength_nm: duplicate wavelengths remain after the repair")
    return wl, order


def load_indian_pines() -> Scene:
    """AVIRIS Indian Pines (corrected, 200 bands): cube (200, 145, 145), labels (145, 145) in 0..16.

    cube = uint16 digital numbers / 1e4 (955..9604 -> 0.0955..0.9604): scaled radiance-like DN,
    not calibrated reflectance. Bands are reordered by wavelength after repairing the list
    (`indian_pines_wavelengths`); ``extra["band_order"]`` maps to the shipped band order and
    ``extra["wavelength_nm_shipped"]`` keeps the original list.
    """
    with np.load(data_file("indian_pines.npz"), allow_pickle=False) as d:
        raw, gt = d["cube"], d["gt"]
        names = [str(n) for n in d["class_names"]]
        shipped = d["wavelength_nm"].astype(np.float64)
    wl, order = indian_pines_wavelengths(shipped)
    cube = np.ascontiguousarray(raw.transpose(2, 0, 1)[order], dtype=np.float32) / np.float32(INDIAN_PINES_SCALE)
    return Scene(cube=cube, wavelength_nm=wl, labels=gt.astype(np.int64), class_names=names,
                 name="indian_pines",
                 extra={"band_order": order, "wavelength_nm_shipped": shipped, "scale": INDIAN_PINES_SCALE})


def load_jasper_ridge() -> Scene:
    """AVIRIS Jasper Ridge crop: cube (198, 100, 100) = uint16 / max_value (5000), values 0..1.087.

    Wavelengths are approximate (``380 + (band - 1) * 2120 / 223`` over the 1-based AVIRIS
    channels kept). No labels. extra: ``abundances`` (4, 100, 100) float32 summing to 1 per pixel,
    ``endmembers`` (198, 4) float32 already in the cube's units (cube / max_value: the abundance
    mixture reproduces the cube to RMSE 0.055, against 1450 if multiplied by max_value),
    ``endmember_names`` (tree, water, dirt, road), ``aviris_band_index_1based`` (198,), ``max_value``.
    """
    with np.load(data_file("jasper_ridge.npz"), allow_pickle=False) as d:
        max_value = float(d["max_value"])
        cube = np.ascontiguousarray(d["cube"].transpose(2, 0, 1), dtype=np.float32) / np.float32(max_value)
        extra = {
            "abundances": np.ascontiguousarray(d["abundances"].transpose(2, 0, 1), dtype=np.float32),
            "endmembers": d["endmembers"].astype(np.float32),
            "endmember_names": [str(n).split("-", 1)[-1] for n in d["endmember_names"]],
            "aviris_band_index_1based": d["aviris_band_index_1based"].astype(np.int64),
            "max_value": max_value,
        }
        wl = d["wavelength_nm_approx"].astype(np.float64)
    return Scene(cube=cube, wavelength_nm=wl, labels=None, class_names=[], name="jasper_ridge", extra=extra)


def load_houston2013() -> PixelSet:
    """Houston 2013 (GRSS DFC) labelled training pixels (MDL-RS per-pixel split): 2,832 pixels.

    hsi (2832, 144) float32 as shipped (scaled, 0..0.653, scaling undocumented); lidar (2832, 21)
    float32 in [0, 1] (columns 0-9 anti-extensive, 10-19 extensive attribute profile, 20 = DSM);
    labels 1..15. wavelength_nm is NOMINAL, linspace(380, 1050, 144): the files have no
    wavelength table. No pixel coordinates, and the HSI test set is not shipped.
    """
    hsi = scipy.io.loadmat(data_file("HSI_TrSet.mat"))["HSI_TrSet"].astype(np.float32)
    lidar = scipy.io.loadmat(data_file("LiDAR_TrSet.mat"))["LiDAR_TrSet"].astype(np.float32)
    labels = scipy.io.loadmat(data_file("TrLabel.mat"))["TrLabel"].ravel().astype(np.int64)
    meta = json.loads(data_file("houston2013_classes.json").read_text())
    classes = sorted(meta["classes"], key=lambda c: c["label"])
    names = ["Unlabelled"] + [c["name"] for c in classes]
    if [c["label"] for c in classes] != list(range(1, len(classes) + 1)):
        raise MmtokError("houston2013_classes.json: labels must be 1..15 in order")
    if not (len(hsi) == len(lidar) == len(labels)):
        raise MmtokError(f"Houston 2013: row counts differ: hsi {len(hsi)}, lidar {len(lidar)}, labels {len(labels)}")
    return PixelSet(hsi=hsi, lidar=lidar, labels=labels, class_names=names,
                    wavelength_nm=np.linspace(380.0, 1050.0, hsi.shape[1]), name="houston2013",
                    extra={"lidar_columns": meta["lidar_columns"], "wavelength_nominal": True})

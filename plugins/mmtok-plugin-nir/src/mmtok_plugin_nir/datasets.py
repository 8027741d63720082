"""The real calibration-transfer data sets shipped with the plugin (provenance in data/README.md):

- **Corn** (Eigenvector / Cargill): 80 samples on 3 NIR instruments m5, mp5, mp6; 700 channels
  1100-2498 nm; Moisture, Oil, Protein, Starch (%).
- **Tablet** (IDRC 2002 shootout): 655 tablets on 2 instruments; 650 channels 600-1898 nm;
  weight (mg), hardness, assay (mg); Eigenvector's Train / Validate / Test split.

`PairedSpectra` is the common form: row i of every instrument's matrix is the same physical
sample. `PairedSpectra.validate` refuses NaN, a wavelength axis that is not increasing and
instruments with different sample counts, naming the data set, instrument and rows.
"""

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from mmtok import MmtokError
from mmtok_plugin_nir.modalities import NIRSpectrum, PropertyTargets

__all__ = ["PairedSpectra", "NIRDataError", "check_axis", "check_finite_rows", "load_corn", "load_tablet",
           "load_dataset", "DATASETS"]


class NIRDataError(MmtokError, ValueError):
    """A spectra set that cannot be used as it is (the message says where and why)."""


def check_axis(wavelength_nm: np.ndarray, where: str) -> None:
    """Raise `NIRDataError` unless wavelength_nm (k,) is strictly increasing (naming the channel)."""
    steps = np.diff(wavelength_nm)
    if not np.all(steps > 0):
        i = int(np.argmax(steps <= 0)) + 1
        raise NIRDataError(f"{where}: wavelength_nm: expected strictly increasing values, found "
                           f"{wavelength_nm[i]:g} nm at channel {i} after {wavelength_nm[i - 1]:g} nm")


def check_finite_rows(x: np.ndarray, where: str) -> None:
    """Raise `NIRDataError` if spectra x (n, k) hold NaN / inf (naming up to 10 rows)."""
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise NIRDataError(f"{where}: expected finite absorbances, found NaN/inf in sample(s) {bad[:10].tolist()}")


@dataclass(frozen=True)
class PairedSpectra:
    """Spectra of the same samples on several instruments.

    spectra: instrument -> (n, k) absorbance; wavelength_nm: (k,) increasing; properties: (n, p);
    split: (n,) str labels ("Train" / "Validate" / "Test") or None.
    """

    name: str
    spectra: dict[str, np.ndarray]
    wavelength_nm: np.ndarray
    properties: np.ndarray
    property_names: tuple[str, ...]
    split: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def instruments(self) -> tuple[str, ...]:
        return tuple(self.spectra)

    @property
    def n_samples(self) -> int:
        return int(self.properties.shape[0])

    def validate(self) -> None:
        wl = np.asarray(self.wavelength_nm)
        if wl.ndim != 1 or wl.size < 2:
            raise NIRDataError(f"{self.name}: wavelength_nm: expected a 1-D axis, found shape {wl.shape}")
        check_axis(wl, self.name)
        n = self.n_samples
        for inst, x in self.spectra.items():
            if x.ndim != 2 or x.shape[1] != wl.size:
                raise NIRDataError(f"{self.name}: instrument {inst!r}: expected (samples, {wl.size}) "
                                   f"spectra, found shape {x.shape}")
            if x.shape[0] != n:
                counts = {k: v.shape[0] for k, v in self.spectra.items()}
                raise NIRDataError(f"{self.name}: instrument {inst!r}: expected {n} samples (one per "
                                   f"property row, same order on every instrument), found {x.shape[0]}; "
                                   f"counts: {counts}")
            check_finite_rows(x, f"{self.name}: instrument {inst!r}")
        if self.properties.shape != (n, len(self.property_names)):
            raise NIRDataError(f"{self.name}: properties: expected ({n}, {len(self.property_names)}), "
                               f"found {self.properties.shape}")

    def property_name(self, name: str) -> str:
        """The data set's spelling of a property name (case-insensitive), or a clear error."""
        names = [p.lower() for p in self.property_names]
        if name.lower() not in names:
            raise NIRDataError(f"{self.name}: no property {name!r}; properties are {list(self.property_names)}")
        return self.property_names[names.index(name.lower())]

    def property(self, name: str) -> np.ndarray:
        """(n,) reference values of one property (case-insensitive name)."""
        return self.properties[:, list(self.property_names).index(self.property_name(name))]

    def instrument(self, name: str) -> np.ndarray:
        """(n, k) spectra of one instrument."""
        if name not in self.spectra:
            raise NIRDataError(f"{self.name}: no instrument {name!r}; instruments are {list(self.spectra)}")
        return self.spectra[name]

    def to_modalities(self, instrument: str, rows: np.ndarray | None = None) -> tuple[NIRSpectrum, PropertyTargets]:
        """The spectra of one instrument (optionally some rows) as typed modalities."""
        rows = np.arange(self.n_samples) if rows is None else np.asarray(rows)
        x = torch.as_tensor(self.instrument(instrument)[rows], dtype=torch.float32)
        wl = torch.as_tensor(self.wavelength_nm, dtype=torch.float32).expand(len(rows), -1).clone()
        inst = torch.full((len(rows),), self.instruments.index(instrument), dtype=torch.long)
        spectrum = NIRSpectrum(values=x, wavelength_nm=wl, instrument=inst, domain=torch.zeros_like(inst))
        targets = PropertyTargets(values=torch.as_tensor(self.properties[rows], dtype=torch.float32),
                                  names=self.property_names)
        return spectrum, targets


def _open(path: Path | None, filename: str):
    if path is None:
        return np.load(resources.files("mmtok_plugin_nir") / "data" / filename, allow_pickle=False)
    return np.load(path, allow_pickle=False)


def load_corn(path: Path | None = None) -> PairedSpectra:
    """Corn: instruments m5, mp5, mp6 (80, 700); properties Moisture, Oil, Protein, Starch.
    The NBS glass standards are in ``extra`` (``m5nbs`` (3, 700), ``mp5nbs``, ``mp6nbs`` (4, 700))."""
    with _open(path, "corn.npz") as d:
        return PairedSpectra(
            name="corn", spectra={k: d[f"{k}spec"].astype(np.float64) for k in ("m5", "mp5", "mp6")},
            wavelength_nm=d["wavelength_nm"].astype(np.float64), properties=d["propvals"].astype(np.float64),
            property_names=tuple(str(p) for p in d["prop_names"]),
            extra={k: d[f"{k}nbs"].astype(np.float64) for k in ("m5", "mp5", "mp6")})


def load_tablet(path: Path | None = None) -> PairedSpectra:
    """Tablet (IDRC 2002): instruments inst1, inst2 (655, 650); properties weight, hardness,
    assay; ``split`` = Train (155) / Validate (40) / Test (460)."""
    with _open(path, "tablet.npz") as d:
        return PairedSpectra(
            name="tablet", spectra={"inst1": d["X_inst1"].astype(np.float64), "inst2": d["X_inst2"].astype(np.float64)},
            wavelength_nm=d["wavelength_nm"].astype(np.float64),
            properties=np.stack([d[k] for k in ("weight", "hardness", "assay")], axis=1).astype(np.float64),
            property_names=("weight", "hardness", "assay"), split=d["split"].astype(str))


DATASETS = {"corn": load_corn, "tablet": load_tablet}


def load_dataset(name: str) -> PairedSpectra:
    if name not in DATASETS:
        raise NIRDataError(f"unknown data set {name!r}; available: {sorted(DATASETS)}")
    return DATASETS[name]()

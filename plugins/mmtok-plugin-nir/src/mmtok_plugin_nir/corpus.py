"""The SpectralFM pretraining corpus: Corn (3 instruments) + Tablet (2) + the nine `spectra_more`
sources (6 NIR, 3 FTIR), each part with its [DOMAIN] and its axis.

Axes, honestly:
- a wavelength axis in nm is used as it is (octane, gasoline, mayonnaise, Corn, Tablet);
- tecator's axis is *approximate* (linspace(850, 1050, 100): its help page gives only the
  range); it is used as a wavelength axis all the same, and the table says "wavelength_nm_approx";
- a wavenumber axis (cm^-1; fermentation, collagen) becomes wavelength_nm = 1e7 / k, flipped
  together with the values where that runs high-to-low (fermentation; collagen is stored
  descending in k, hence already increasing in nm);
- fruit, yarn and coffee have **no axis**: their channel index is not a wavelength. They are
  resampled along the index (a relative position, 0..1) and flagged ``axis_known = False``, so
  the WaveletEmbedding gives them its learned relative-position code instead of the wavenumber
  code (`model.embedding.WaveletEmbedding`).

Domains (`modalities.DOMAINS`): NIR for the NIR sets (fruit's help page says only "spectra"; the
staging README assumes NIR, so do we), IR for the ATR-FTIR sets. No Raman data.

Cleaning: fermentation loses its 3 constant rows (1626-1628) and the saturated channels (all
below 900 cm^-1 and the two at 1794 / 1796 cm^-1), and only every 2nd spectrum of its 1.25-min
series is shipped (the size budget; neighbours 1.25 min apart are near-duplicates); octane keeps
its 6 alcohol outliers (samples 25, 26, 36-39): they are real spectra, and pretraining is
self-supervised. Corn and Tablet leave out every held-out test row of the benchmark splits
(`protocol.calibration_split`; Tablet keeps Train + Validate).

The shipped arrays (``data/corpus_*.npz``, float32, no pickles) are made from the staged copies
by `ship_spectra_more`; provenance and licences are in ``data/README.md``.
"""

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from mmtok_plugin_nir.datasets import NIRDataError, check_axis, check_finite_rows, load_dataset
from mmtok_plugin_nir.modalities import DOMAINS
from mmtok_plugin_nir.preprocessing import prepare
from mmtok_plugin_nir.protocol import calibration_split

__all__ = ["CorpusError", "Source", "SPECTRA_MORE", "CORPUS", "CorpusSource", "CorpusPart", "load_source",
           "pretraining_corpus", "check_corpus", "check_batch", "corpus_table", "corpus_markdown",
           "write_corpus_doc", "clean_fermentation", "ship_spectra_more"]


class CorpusError(NIRDataError):
    """A pretraining corpus or batch that cannot be used (unknown source, missing domain label, ...)."""


@dataclass(frozen=True)
class Source:
    """One spectra_more source: its shipped file, the staged file it was made from, its domain,
    axis kind ("wavelength_nm", "wavelength_nm_approx", "wavenumber_cm1" or "none") and licence."""

    name: str
    staged: str
    domain: str
    axis: str
    licence: str
    what: str

    @property
    def file(self) -> str:
        return f"corpus_{self.name}.npz"


_GPL_RRCOV = "GPL (>= 3), R package rrcov (Debian r-cran-rrcov 1.7-2-1; Debian copyright: GPL-2+)"
_GPL_PLS = "GPL-2, R package pls (Debian r-cran-pls 2.8-1-1)"
SPECTRA_MORE: dict[str, Source] = {s.name: s for s in (
    Source("fruit", "rrcov_fruit.npz", "NIR", "none", _GPL_RRCOV, "cantaloupe, 3 cultivars (domain assumed NIR)"),
    Source("octane", "rrcov_octane.npz", "NIR", "wavelength_nm", _GPL_RRCOV,
           "gasoline octane (6 alcohol outliers kept)"),
    Source("tecator", "caret_tecator.npz", "NIR", "wavelength_nm_approx",
           "GPL (>= 2), R package caret (Debian r-cran-caret 6.0-93); StatLib permission note attached",
           "meat, Tecator Infratec transmission"),
    Source("gasoline", "pls_gasoline.npz", "NIR", "wavelength_nm", _GPL_PLS, "gasoline (Kalivas 1997)"),
    Source("mayonnaise", "pls_mayonnaise.npz", "NIR", "wavelength_nm", _GPL_PLS, "mayonnaise, 6 oils"),
    Source("yarn", "pls_yarn.npz", "NIR", "none", _GPL_PLS, "PET yarns"),
    Source("fermentation", "chemotools_fermentation.npz", "IR", "wavenumber_cm1", "MIT, PyPI chemotools 0.5.0",
           "ATR-FTIR, on-line ethanol fermentation"),
    Source("coffee", "chemotools_coffee.npz", "IR", "none", "MIT, PyPI chemotools 0.5.0",
           "ATR-FTIR, coffee of 3 origins"),
    Source("collagen", "orange_collagen.npz", "IR", "wavenumber_cm1",
           "GPL-3.0-or-later, PyPI orange-spectroscopy 0.9.3", "FTIR absorbance, 4 tissue classes"),
)}
_PAIRED_LICENCE = {"corn": "public domain (Eigenvector / Cargill; see data/README.md)",
                   "tablet": "public domain (IDRC 2002 shootout; see data/README.md)"}
#: every source of the full corpus, in the order of the global instrument ids
CORPUS: tuple[str, ...] = ("corn", "tablet", *SPECTRA_MORE)


@dataclass(frozen=True)
class CorpusSource:
    """One source on its native channels. spectra: instrument -> (n, k) float64; wavelength_nm:
    (k,) strictly increasing, or None (no axis); native_axis: (k,) the axis as stored (nm, cm^-1
    or channel index, in the order of the columns); axis_kind see `Source`."""

    name: str
    spectra: dict[str, np.ndarray]
    wavelength_nm: np.ndarray | None
    native_axis: np.ndarray
    axis_kind: str
    domain: str
    licence: str
    what: str


@dataclass
class CorpusPart:
    """The spectra of one source on the common grid. spectra: (n, L) SNV float32; wavelength_nm:
    (L,) or None when the source has no axis (axis_known False); instrument: (n,) global ids,
    one per (source, instrument); domain: a `DOMAINS` name (None = unlabelled, refused by
    `check_corpus`)."""

    name: str
    spectra: torch.Tensor
    wavelength_nm: torch.Tensor | None
    instrument: torch.Tensor
    domain: str | None = "NIR"
    axis_known: bool = True

    @property
    def domain_id(self) -> int:
        return DOMAINS.index(self.domain)


def _data(filename: str):
    return np.load(resources.files("mmtok_plugin_nir") / "data" / filename, allow_pickle=False)


def _paired(name: str, exclude_test: bool) -> CorpusSource:
    data = load_dataset(name)
    rows = calibration_split(data)[0] if exclude_test else np.arange(data.n_samples)
    if data.split is not None and exclude_test:   # Tablet: the Validate rows are not test rows either
        rows = np.flatnonzero(data.split != "Test")
    what = {"corn": "corn, 3 instruments (m5, mp5, mp6)", "tablet": "tablets, 2 instruments"}[name]
    return CorpusSource(name, {inst: data.instrument(inst)[rows] for inst in data.instruments},
                        data.wavelength_nm, data.wavelength_nm, "wavelength_nm", "NIR", _PAIRED_LICENCE[name], what)


def load_source(name: str, exclude_test: bool = True) -> CorpusSource:
    """One corpus source by name (`CORPUS`), on its native channels, cleaned; for Corn / Tablet
    without their test rows unless exclude_test is False."""
    if name in ("corn", "tablet"):
        return _paired(name, exclude_test)
    if name not in SPECTRA_MORE:
        raise CorpusError(f"unknown corpus source {name!r}; available: {list(CORPUS)}")
    src = SPECTRA_MORE[name]
    with _data(src.file) as d:
        x = d["X"].astype(np.float64)
        axis_key = next(k for k in d.files if k.startswith(("wavelength", "wavenumber", "channel")))
        native = d[axis_key].astype(np.float64)
    check_finite_rows(x, f"corpus source {name!r}")
    if src.axis == "none":
        wl = None
    elif src.axis == "wavenumber_cm1":
        wl = 1e7 / native
        if wl[0] > wl[-1]:            # high-to-low in nm: flip the axis and the values together
            wl, x = wl[::-1].copy(), x[:, ::-1].copy()
    else:
        wl = native
    if wl is not None:
        check_axis(wl, f"corpus source {name!r}")
    return CorpusSource(name, {name: x}, wl, native, src.axis, src.domain, src.licence, src.what)


def pretraining_corpus(datasets=CORPUS, n_points: int = 2048, exclude_test: bool = True) -> list[CorpusPart]:
    """The unlabelled pretraining spectra, one part per source, resampled to n_points + SNV
    (`preprocessing.prepare`; sources without an axis are resampled along the channel index).
    Instrument ids are global: one per (source, instrument), in the order of ``datasets``."""
    parts, next_id = [], 0
    for name in datasets:
        src = load_source(name, exclude_test)
        xs, ids = [], []
        for x in src.spectra.values():
            index = np.arange(x.shape[1], dtype=np.float64)
            xt, wl = prepare(x, index if src.wavelength_nm is None else src.wavelength_nm, n_points)
            xs.append(xt)
            ids.append(torch.full((x.shape[0],), next_id, dtype=torch.long))
            next_id += 1
        parts.append(CorpusPart(name, torch.cat(xs), None if src.wavelength_nm is None else wl,
                                torch.cat(ids), src.domain, src.wavelength_nm is not None))
    check_corpus(parts)
    return parts


def check_corpus(parts: list[CorpusPart]) -> None:
    """Raise `CorpusError` unless every part has a `DOMAINS` label and an axis matching its flag."""
    labelled = sorted({p.domain for p in parts if p.domain is not None})
    for p in parts:
        if p.domain is None:
            raise CorpusError(f"corpus part {p.name!r}: no domain label; expected one of {list(DOMAINS)} (the "
                              f"[DOMAIN] token), found None; the corpus holds {labelled or 'no labelled parts'}, "
                              f"and spectra of different domains cannot share a batch unlabelled")
        if p.domain not in DOMAINS:
            raise CorpusError(f"corpus part {p.name!r}: domain {p.domain!r} is not one of {list(DOMAINS)} "
                              f"(FTIR is 'IR')")
        if p.axis_known != (p.wavelength_nm is not None):
            raise CorpusError(f"corpus part {p.name!r}: axis_known={p.axis_known} but wavelength_nm is "
                              f"{'missing' if p.wavelength_nm is None else 'given'}")


def check_batch(batch: dict, where: str = "pretraining batch") -> None:
    """Raise `CorpusError` unless a pretraining batch carries per-sample domain labels (b,) in
    range, and a wavelength axis for every sample flagged as having one."""
    b = batch["clean"].shape[0]
    domain = batch.get("domain")
    if domain is None:
        raise CorpusError(f"{where}: no 'domain' labels; expected a (b,) = ({b},) tensor of ids into "
                          f"{list(DOMAINS)}: a batch may mix domains only when each sample says which")
    if tuple(domain.shape) != (b,) or domain.dtype != torch.long:
        raise CorpusError(f"{where}: 'domain': expected a ({b},) long tensor, found {tuple(domain.shape)} {domain.dtype}")
    bad = ((domain < 0) | (domain >= len(DOMAINS))).nonzero()[:, 0].tolist()
    if bad:
        raise CorpusError(f"{where}: 'domain' of sample(s) {bad[:10]}: expected ids 0..{len(DOMAINS) - 1} "
                          f"({', '.join(DOMAINS)}), found {domain[bad[:10]].tolist()}")
    known = batch.get("axis_known")
    if batch.get("wavelength_nm") is None and (known is None or bool(torch.as_tensor(known).any())):
        raise CorpusError(f"{where}: no 'wavelength_nm' but the samples are not flagged axis_known=False")


# ---------------------------------------------------------------------------- the corpus table
def corpus_table(datasets=CORPUS, exclude_test: bool = True) -> list[dict]:
    """One row per source: source, domain, n (spectra, all instruments), instruments, channels,
    axis kind and native range, range in nm (None without an axis), licence, what."""
    rows = []
    for name in datasets:
        src = load_source(name, exclude_test)
        native = src.native_axis
        unit = {"wavenumber_cm1": "cm⁻¹", "none": "channel"}.get(src.axis_kind, "nm")
        nm = None if src.wavelength_nm is None else (float(src.wavelength_nm[0]), float(src.wavelength_nm[-1]))
        rows.append({"source": name, "domain": src.domain, "n": sum(x.shape[0] for x in src.spectra.values()),
                     "instruments": len(src.spectra), "channels": int(native.size), "axis": src.axis_kind,
                     "axis_range": f"{native.min():g}–{native.max():g} {unit}", "nm_range": nm,
                     "licence": src.licence, "what": src.what})
    return rows


def corpus_markdown(rows: list[dict]) -> str:
    """The table of `corpus_table` as markdown, with totals per domain."""
    lines = ["| source | domain | n | instruments | channels | axis | axis range | as nm | licence |",
             "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |"]
    for r in rows:
        nm = "— (relative position code)" if r["nm_range"] is None else f"{r['nm_range'][0]:.0f}–{r['nm_range'][1]:.0f}"
        lines.append(f"| {r['source']} ({r['what']}) | {r['domain']} | {r['n']} | {r['instruments']} | "
                     f"{r['channels']} | {r['axis']} | {r['axis_range']} | {nm} | {r['licence']} |")
    totals = {}
    for r in rows:
        totals[r["domain"]] = totals.get(r["domain"], 0) + r["n"]
    no_axis = sum(r["n"] for r in rows if r["nm_range"] is None)
    lines.append("")
    lines.append(f"**Total: {sum(totals.values())} spectra** ("
                 + ", ".join(f"{d} {n}" for d, n in totals.items()) + f"); {no_axis} of them without a wavelength axis.")
    return "\n".join(lines) + "\n"


def write_corpus_doc(path: str | Path, datasets=CORPUS) -> Path:
    """Write the corpus table (`corpus_markdown`) with its notes to ``path`` (markdown)."""
    from mmtok import atomic_write

    text = ("# SpectralFM pretraining corpus\n\n"
            "Generated by `mmtok_plugin_nir.corpus.write_corpus_doc` from the shipped arrays. Counts are the "
            "spectra pretraining draws from: Corn and Tablet without their benchmark test rows (Corn: the 60 "
            "calibration-pool samples × 3 instruments; Tablet: Train + Validate, 195 × 2), fermentation after "
            "cleaning (constant rows and saturated channels dropped, every 2nd spectrum shipped), octane with "
            "its alcohol outliers kept. tecator's axis is approximate (linspace over the documented range) and "
            "is used as a wavelength axis; fruit, yarn and coffee have no axis and get the embedding's "
            "relative-position code (never a made-up wavelength). Each batch comes from one source.\n\n"
            + corpus_markdown(corpus_table(datasets)))
    path = Path(path)
    atomic_write(path, lambda p: p.write_text(text))
    return path


# ---------------------------------------------------------------------------- shipping the arrays
def clean_fermentation(x: np.ndarray, wavenumber_cm1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop the constant rows and the saturated channels (< 900 cm^-1, 1794 and 1796 cm^-1) of the
    chemotools fermentation spectra x (n, k). Returns (x (n', k'), kept rows (n',), kept channel mask (k,))."""
    rows = np.flatnonzero(np.ptp(x, axis=1) > 0)
    channels = (wavenumber_cm1 >= 900) & ~np.isin(wavenumber_cm1, (1794.0, 1796.0))
    return x[rows][:, channels], rows, channels


def ship_spectra_more(staged: str | Path, out: str | Path, fermentation_every: int = 2) -> dict[str, int]:
    """Write ``out/corpus_<name>.npz`` (np.savez_compressed, X float32, no objects) from the staged
    ``shared/data/spectra_more/`` copies; returns the bytes written per file. Fermentation is
    cleaned (`clean_fermentation`) and thinned to every ``fermentation_every``-th spectrum."""
    staged, out = Path(staged), Path(out)
    sizes = {}
    for src in SPECTRA_MORE.values():
        with np.load(staged / src.staged, allow_pickle=False) as d:
            x = d["X"]
            axis_key = next(k for k in d.files if k.startswith(("wavelength", "wavenumber", "channel")))
            axis = d[axis_key]
            keep = {"source": str(d["source"]), "staged_domain": str(d["domain"])}
            if "axis_note" in d.files:
                keep["axis_note"] = str(d["axis_note"])
            if "permission_note" in d.files:
                keep["permission_note"] = str(d["permission_note"])
            rows = np.arange(x.shape[0])
            if src.name == "fermentation":
                x, rows, channels = clean_fermentation(x, axis)
                axis = axis[channels]
                x, rows = x[::fermentation_every], rows[::fermentation_every]
                keep["spectrum_time_h_nominal"] = d["spectrum_time_h_nominal"][rows]
                keep["cleaning"] = (f"dropped the constant rows and the channels < 900 cm-1 and at 1794/1796 cm-1; "
                                    f"kept one spectrum in {fermentation_every} of the 1.25-min series (rows 0, {fermentation_every}, ...)")
            if src.name == "octane":
                keep["alcohol_outlier"] = np.isin(np.arange(x.shape[0]), [24, 25, 35, 36, 37, 38])
        path = out / src.file
        np.savez_compressed(path, X=x.astype(np.float32), **{axis_key: axis}, rows=rows.astype(np.int32),
                            domain=src.domain, licence=src.licence, **keep)
        sizes[src.file] = path.stat().st_size
    return sizes

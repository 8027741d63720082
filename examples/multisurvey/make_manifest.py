"""Write the multisurvey example's data and manifest from the real HSC cutouts shipped in
mmtok-plugin-astro: one sample per catalogued source, a 24 x 24 grizy crop centred on it
(npz, or FITS for the Cut_HSC field), and a catalogue row where the source has one.

    python examples/multisurvey/make_manifest.py

13 sources: 7 in hsc_cosmos_35 (positions only, so no catalogue row), 6 in hsc_cosmos (full
SEP record: x, y, flux, a, b, theta), plus the centre of Cut_HSC.fits (no catalogue). There is
no Legacy Survey or Gaia data in the repository, so no sample has those modalities.
"""

import csv
import json
from pathlib import Path

import numpy as np
from astropy.io import fits

from mmtok_plugin_astro.datasets import read_cutout
from mmtok_plugin_astro.modalities import SourceCatalog

HERE = Path(__file__).resolve().parent
CROP = 24


def crop(images: np.ndarray, x: float, y: float) -> tuple[slice, slice]:
    """24 x 24 window centred on (x, y), moved inside the image."""
    h, w = images.shape[-2:]
    top = int(np.clip(round(y) - CROP // 2, 0, h - CROP))
    left = int(np.clip(round(x) - CROP // 2, 0, w - CROP))
    return slice(top, top + CROP), slice(left, left + CROP)


def main() -> None:
    data = HERE / "data"
    samples, rows = [], []
    for field in ("hsc_cosmos_35", "hsc_cosmos"):
        record = read_cutout(field)
        cat = record["catalog"]
        for i, src in enumerate(cat):
            sid = f"{field}-{i}"
            ys, xs = crop(record["images"], float(src["x"]), float(src["y"]))
            arrays = {"images": record["images"][:, ys, xs], "filters": record["filters"]}
            for extra in ("variance", "mask"):
                if extra in record:
                    arrays[extra] = record[extra][:, ys, xs]
            np.savez_compressed(data / f"{sid}.npz", **arrays)
            mods = {"hsc_image": f"data/{sid}.npz"}
            if "flux" in cat.dtype.names:
                rows.append({"source_id": sid, **{c: float(src[c]) for c in SourceCatalog.columns}})
                mods["source_catalog"] = {"table": "sources", "row": sid}
            samples.append({"id": sid, "modalities": mods, "metadata": {"field": field}})
    cut = read_cutout("cut_hsc")["flux"]
    ys, xs = crop(cut, cut.shape[-1] / 2, cut.shape[-2] / 2)
    fits.PrimaryHDU(cut[:, ys, xs]).writeto(data / "cut_hsc-centre.fits", overwrite=True)
    samples.append({"id": "cut_hsc-centre", "modalities": {"hsc_image": "data/cut_hsc-centre.fits"},
                    "metadata": {"field": "cut_hsc"}})
    with open(data / "sources.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["source_id", *SourceCatalog.columns])
        w.writeheader()
        w.writerows(rows)
    manifest = {"tables": {"sources": {"path": "data/sources.csv", "key": "source_id"}},
                "samples": samples}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(samples)} samples ({len(rows)} with a catalogue row) to {HERE / 'manifest.json'}")


if __name__ == "__main__":
    main()

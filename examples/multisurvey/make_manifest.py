"""Write the multisurvey example's data and manifest from the real data shipped in
mmtok-plugin-astro.

    python examples/multisurvey/make_manifest.py

64 samples from two unrelated sky fields, so no sample has every modality:
- 14 HSC COSMOS samples (RA 150, Dec 2.2): one 24 x 24 grizy crop per catalogued source
  (`hsc_source_crops`: 7 in hsc_cosmos_35, 6 in hsc_cosmos, npz; the centre of Cut_HSC.fits,
  FITS); the 6 of hsc_cosmos also have a source-catalogue row (full SEP record).
- 50 Gaia DR3 sources (RA 280, Dec -60), rows of data/gaia_dr3_cone_search_50.csv (a byte copy
  of the plugin's file): all have `gaia_photometry` (G, BP, RP); the 44 with a 5-parameter
  solution also have `gaia_astrometry` (parallax, pmra, pmdec). The 6 with null parallax have
  no astrometry entry at all: a missing measurement is an absent modality, never a number.
There is no Legacy Survey data in the repository, so no sample has a Legacy Survey image.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits

from mmtok_plugin_astro import (GAIA_CSV, GaiaAstrometry, GaiaPhotometry, SourceCatalog, gaia_split,
                                hsc_source_crops, read_gaia_catalog)

HERE = Path(__file__).resolve().parent
CROP = 24


def hsc_samples(data: Path) -> tuple[list[dict], list[dict]]:
    samples, rows = [], []
    for sid, crop in hsc_source_crops(CROP).items():
        if "images" in crop["record"]:
            np.savez_compressed(data / f"{sid}.npz", **crop["record"])
            mods = {"hsc_image": f"data/{sid}.npz"}
        else:  # cut_hsc: a FITS cutout
            fits.PrimaryHDU(crop["record"]["flux"]).writeto(data / f"{sid}.fits", overwrite=True)
            mods = {"hsc_image": f"data/{sid}.fits"}
        if crop["catalog"] is not None:
            rows.append({"source_id": sid, **crop["catalog"]})
            mods["source_catalog"] = {"table": "sources", "row": sid}
        samples.append({"id": sid, "modalities": mods, "metadata": {"field": crop["field"]}})
    with open(data / "sources.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["source_id", *SourceCatalog.columns])
        w.writeheader()
        w.writerows(rows)
    return samples, rows


def gaia_samples(data: Path) -> list[dict]:
    shutil.copyfile(GAIA_CSV, data / GAIA_CSV.name)  # unchanged: origin and licence in the plugin's DATA.md
    cat = read_gaia_catalog()
    has = {m.name: m.complete_rows(cat) for m in (GaiaPhotometry, GaiaAstrometry)}
    test = gaia_split("test")
    samples = []
    for i, (source_id, designation) in enumerate(zip(cat["source_id"], cat["designation"])):
        mods = {name: {"table": "gaia", "row": str(designation)} for name, ok in has.items() if ok[i]}
        samples.append({"id": f"gaia-{source_id}", "modalities": mods,
                        "metadata": {"field": "gaia_cone_ra280_dec-60",
                                     "codec_split": "test" if test[i] else "train"}})
    return samples


def main() -> None:
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    hsc, rows = hsc_samples(data)
    gaia = gaia_samples(data)
    manifest = {"tables": {"sources": {"path": "data/sources.csv", "key": "source_id"},
                           # designation ("Gaia DR3 <source_id>") is the key: read_csv parses the
                           # 19-digit source_id as float64, which does not keep every digit
                           "gaia": {"path": f"data/{GAIA_CSV.name}", "key": "designation"}},
                "samples": hsc + gaia}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    astrometry = sum("gaia_astrometry" in s["modalities"] for s in gaia)
    print(f"wrote {len(hsc) + len(gaia)} samples to {HERE / 'manifest.json'}: {len(hsc)} HSC crops "
          f"({len(rows)} with a catalogue row), {len(gaia)} Gaia sources ({astrometry} with astrometry)")


if __name__ == "__main__":
    main()

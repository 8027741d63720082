"""Write the NIR example's manifest and spectra: held-out real spectra that the shipped NIR codecs
(`nir/corn-tablet-spectrum-fsq`, `nir/corn-properties-quantile`) were not fitted on.

    python examples/spectra/make_manifest.py

Samples: the 20 Corn test rows (`mmtok_plugin_nir.protocol.calibration_split`) on each of the 3
instruments (m5, mp5, mp6; spectrum + the 4 reference values), and the first 20 Tablet Test tablets
on instrument 1 (spectrum only: the tablets' 3 properties are another stream's schema). One
``data/<id>.npz`` per sample: ``absorbance`` (l,) float32, ``wavelength_nm`` (l,) float32,
``instrument`` and ``domain`` (0 = NIR) int64, and for Corn ``properties`` (4,) float32. Source
files and licences: DATA.md.
"""

import json
from pathlib import Path

import numpy as np

from mmtok_plugin_nir.datasets import load_corn, load_tablet
from mmtok_plugin_nir.protocol import calibration_split

HERE = Path(__file__).resolve().parent


def main() -> None:
    (HERE / "data").mkdir(exist_ok=True)
    corn, tablet = load_corn(), load_tablet()
    samples = []

    def add(sample_id: str, data, instrument: str, row: int, with_properties: bool) -> None:
        arrays = {"absorbance": data.instrument(instrument)[row].astype(np.float32),
                  "wavelength_nm": data.wavelength_nm.astype(np.float32),
                  "instrument": np.int64(data.instruments.index(instrument)), "domain": np.int64(0)}
        fields = {"values": "absorbance", "wavelength_nm": "wavelength_nm", "instrument": "instrument",
                  "domain": "domain"}
        modalities = {"nir_spectrum": {"path": f"data/{sample_id}.npz", "fields": fields}}
        if with_properties:
            arrays["properties"] = data.properties[row].astype(np.float32)
            modalities["nir_properties"] = {"path": f"data/{sample_id}.npz", "fields": {"values": "properties"}}
        np.savez(HERE / "data" / f"{sample_id}.npz", **arrays)
        samples.append({"id": sample_id, "modalities": modalities,
                        "metadata": {"dataset": data.name, "instrument": instrument, "row": int(row)}})

    for instrument in corn.instruments:
        for row in calibration_split(corn)[1]:
            add(f"corn-{instrument}-{row:02d}", corn, instrument, int(row), True)
    for row in np.flatnonzero(tablet.split == "Test")[:20]:
        add(f"tablet-inst1-{row:03d}", tablet, "inst1", int(row), False)
    (HERE / "manifest.json").write_text(json.dumps({"version": 1, "samples": samples}, indent=1) + "\n")
    print(f"wrote {len(samples)} samples to {HERE / 'manifest.json'}")


if __name__ == "__main__":
    main()

"""Write examples/clinic/data/patients.csv and manifest.json from the diabetes study shipped in
mmtok-plugin-tabular. Every patient has demographics; vitals are missing for every 3rd patient
and labs for every 4th (offset 1), so the manifest exercises samples with 1, 2 or 3 modalities.

    python examples/clinic/make_manifest.py
"""

import csv
import json
from pathlib import Path

from mmtok_plugin_tabular.datasets import read_diabetes_columns

HERE = Path(__file__).resolve().parent


def main() -> None:
    cols = read_diabetes_columns()
    n = len(cols["age"])
    ids = [f"p{i:03d}" for i in range(n)]
    with open(HERE / "data" / "patients.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", *cols])
        for i in range(n):
            w.writerow([ids[i], *(f"{cols[c][i]:g}" for c in cols)])
    samples = []
    for i, pid in enumerate(ids):
        mods = {"patient_demographics": {"table": "patients", "row": pid}}
        if i % 3 != 0:
            mods["vital_signs"] = {"table": "patients", "row": pid}
        if i % 4 != 1:
            mods["lab_results"] = {"table": "patients", "row": pid}
        samples.append({"id": pid, "modalities": mods})
    manifest = {"version": 1,
                "tables": {"patients": {"path": "data/patients.csv", "key": "patient_id"}},
                "samples": samples}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {HERE / 'manifest.json'} ({n} samples)")


if __name__ == "__main__":
    main()

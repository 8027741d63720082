"""Write src/mmtok_plugin_tabular/data/diabetes.csv from scikit-learn's copy of the study.

    pip install scikit-learn && python scripts/export_diabetes_csv.py

Values are written in their shortest exact decimal form, so the CSV parses back to exactly
``sklearn.datasets.load_diabetes(scaled=False)`` (float64).
"""

import csv
from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes

OUT = Path(__file__).resolve().parents[1] / "src" / "mmtok_plugin_tabular" / "data" / "diabetes.csv"


def main() -> None:
    d = load_diabetes(scaled=False)
    header = [*d.feature_names, "target"]
    table = np.column_stack([d.data, d.target])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for row in table:
            writer.writerow([np.format_float_positional(v, trim="-") for v in row])
    print(f"wrote {OUT} ({table.shape[0]} rows, columns {header})")


if __name__ == "__main__":
    main()

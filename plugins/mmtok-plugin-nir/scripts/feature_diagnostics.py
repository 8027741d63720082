"""Why SpectralFM transfers poorly on Corn: the spread of its z_chem features and how well they
predict on the *source* instrument itself, against PLS on the raw spectra.

    python plugins/mmtok-plugin-nir/scripts/feature_diagnostics.py --checkpoint runs/nir/spectralfm

Calibrates on the m5 calibration pool (60 samples) and predicts the 20 m5 test samples (no
transfer): ridge (LOO-CV alpha) on standardised mu_chem, and the plugin's CV-chosen PLS.
"""

import argparse

import numpy as np
import torch
from sklearn.linear_model import RidgeCV

from mmtok_plugin_nir.baselines import fit_pls
from mmtok_plugin_nir.datasets import load_corn
from mmtok_plugin_nir.metrics import regression_metrics
from mmtok_plugin_nir.preprocessing import prepare
from mmtok_plugin_nir.protocol import calibration_split
from mmtok_plugin_nir.transfer import load_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--instrument", default="m5")
    args = parser.parse_args()
    corn, model = load_corn(), load_pretrained(args.checkpoint)
    pool, test = calibration_split(corn)
    x = corn.instrument(args.instrument)
    with torch.no_grad():
        s, wl = prepare(x, corn.wavelength_nm, model.config.n_points)
        z = model.features(s, wl, torch.zeros(len(s), dtype=torch.long)).double().numpy()
    mean, std = z[pool].mean(0), z[pool].std(0) + 1e-8
    print(f"mu_chem spread over the calibration spectra: mean per-feature std {z[pool].std(0).mean():.2e}")
    print(f"| property ({args.instrument} -> {args.instrument}) | RMSEP ridge on z_chem | RMSEP PLS on spectra |")
    print("|---|---:|---:|")
    for prop in corn.property_names:
        y = corn.property(prop)
        ridge = RidgeCV(alphas=np.logspace(-6, 3, 19)).fit((z[pool] - mean) / std, y[pool])
        r_fm = regression_metrics(y[test], ridge.predict((z[test] - mean) / std))["rmsep"]
        r_pls = regression_metrics(y[test], fit_pls(x[pool], y[pool]).predict(x[test]))["rmsep"]
        print(f"| {prop} | {r_fm:.3f} | {r_pls:.3f} |")


if __name__ == "__main__":
    main()

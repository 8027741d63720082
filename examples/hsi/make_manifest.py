"""Write the HSI example's data files and manifest.json from the Houston 2013 pixels shipped in
mmtok-plugin-hsi (its data/DATA.md has the provenance and licence).

    python examples/hsi/make_manifest.py

96 labelled training pixels of the 2013 GRSS Data Fusion Contest scene (the first 96 rows of
`HSI_TrSet.mat`; all 15 classes occur), each a 1 x 1 px cube of 144 CASI bands: 32 written as
MATLAB .mat, 32 as ENVI .hdr/.img (through `spectral`), 32 as .npz. Two of every three samples
also have their 21 LiDAR features (DSM + attribute profiles) as an `elevation_map` (.npy); the
others lack it, as real collections lack auxiliaries. The file holds no wavelength table: the
nominal CASI range, 144 bands over 380-1050 nm, is written with each cube.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import scipy.io

import mmtok_plugin_hsi
from mmtok_plugin_hsi.readers import write_envi

HERE = Path(__file__).resolve().parent
DATA = Path(mmtok_plugin_hsi.__file__).parent / "data"
N = 96
FORMATS = ("mat", "envi", "npz")


def main() -> None:
    hsi = scipy.io.loadmat(DATA / "HSI_TrSet.mat")["HSI_TrSet"].astype(np.float32)
    lidar = scipy.io.loadmat(DATA / "LiDAR_TrSet.mat")["LiDAR_TrSet"].astype(np.float32)
    labels = scipy.io.loadmat(DATA / "TrLabel.mat")["TrLabel"].ravel()
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(hsi), N, replace=False))  # spread over the file (it is sorted by class)
    wavelength = np.linspace(380.0, 1050.0, hsi.shape[1])
    out = HERE / "data"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    samples = []
    for k, row in enumerate(rows):
        sid, fmt = f"houston_{row:04d}", FORMATS[k % 3]
        cube = hsi[row].reshape(-1, 1, 1)  # (bands, h, w)
        if fmt == "mat":
            path = f"data/{sid}.mat"  # MATLAB's (h, w, bands) layout, as scene .mat files hold it
            scipy.io.savemat(HERE / path, {"cube": np.moveaxis(cube, 0, -1), "wavelength": wavelength})
        elif fmt == "envi":
            path = f"data/{sid}.hdr"
            write_envi(HERE / path, cube, wavelength)
        else:
            path = f"data/{sid}.npz"
            np.savez(HERE / path, reflectance=cube, wavelength_nm=wavelength)
        modalities = {"hsi_cube": path}
        if k % 3 != 2:
            aux = f"data/{sid}_lidar.npy"
            np.save(HERE / aux, lidar[row].reshape(-1, 1, 1))  # (21, 1, 1): channels first
            modalities["elevation_map"] = aux
        samples.append({"id": sid, "modalities": modalities,
                        "metadata": {"label": int(labels[row]), "format": fmt, "row": int(row)}})
    manifest = {"version": 1, "samples": samples}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(samples)} samples ({sum('elevation_map' in s['modalities'] for s in samples)} with LiDAR) "
          f"to {HERE / 'manifest.json'}")


if __name__ == "__main__":
    main()

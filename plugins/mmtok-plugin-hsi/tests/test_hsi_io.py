"""Readers (MATLAB v5 / v7.3, ENVI through `spectral`, npz) and the modalities' checks: bad input
is one line naming the sample and the field. Real data: chips of the shipped Indian Pines cube."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

import mmtok
from mmtok import Manifest, ModalityError
from mmtok_plugin_hsi import ElevationMap, HSICube, InfraredImage, read_envi, read_mat, write_envi

DATA = Path(__import__("mmtok_plugin_hsi").__file__).parent / "data"


@pytest.fixture(scope="module")
def pines():
    """A 16 x 16 px chip of Indian Pines (h, w, bands) uint16 and the shipped wavelength list."""
    with np.load(DATA / "indian_pines.npz", allow_pickle=False) as d:
        return d["cube"][40:56, 60:76].copy(), d["wavelength_nm"].copy()


def _increasing(wl):
    """The shipped list has overlaps / typos (DATA.md); a strictly increasing stand-in of the same range."""
    return np.linspace(wl.min(), wl.max(), wl.size)


def test_mat_v5_and_v73_read_the_same_cube(tmp_path, pines):
    cube, wl = pines
    wl = _increasing(wl)
    scipy.io.savemat(tmp_path / "v5.mat", {"indian_pines": cube, "wavelength": wl[None], "note": "text"})
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:  # MATLAB v7.3 layout: axes reversed
        f["indian_pines"] = cube.T
        f["wavelength"] = wl[None].T
    with open(tmp_path / "v73.mat", "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    v5, v73 = read_mat(tmp_path / "v5.mat"), read_mat(tmp_path / "v73.mat")
    assert "note" not in v5  # strings are not data
    for record in (v5, v73):
        m = HSICube.from_record(record, sample_id="chip")
        assert m.reflectance.shape == (1, 200, 16, 16)
        np.testing.assert_array_equal(m.reflectance[0].numpy(), np.moveaxis(cube, -1, 0).astype(np.float32))
        np.testing.assert_allclose(m.wavelength_nm[0].numpy(), wl, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Image data contains NaN values")
def test_envi_written_by_spectral_round_trips_with_bad_band_list(tmp_path, pines):
    cube, wl = pines
    wl = _increasing(wl)
    bands = np.moveaxis(cube, -1, 0).astype(np.float32)
    bands[7] = np.nan  # a dead band, flagged in the header's bbl
    mask = np.ones(200, dtype=bool)
    mask[7] = False
    write_envi(tmp_path / "chip.hdr", bands, wl, mask)
    record = read_envi(tmp_path / "chip.hdr")
    assert record["reflectance"].shape == (200, 16, 16)
    np.testing.assert_allclose(record["wavelength_nm"], wl, rtol=1e-6)
    assert record["band_mask"].tolist() == mask.tolist()
    m = HSICube.from_record(record, sample_id="chip")
    assert not bool(m.band_mask[0, 7]) and float(m.reflectance[0, 7].abs().max()) == 0.0  # NaN of a masked band -> 0
    np.testing.assert_array_equal(m.reflectance[0, 8].numpy(), bands[8])


def test_envi_micrometre_wavelengths_become_nm(tmp_path):
    import spectral.io.envi as envi

    x = np.random.default_rng(0).random((4, 4, 5)).astype(np.float32)
    envi.save_image(str(tmp_path / "um.hdr"), x, metadata={"wavelength": [0.4, 0.5, 0.6, 0.7, 0.8],
                                                              "wavelength units": "Micrometers"}, ext=".img")
    np.testing.assert_allclose(read_envi(tmp_path / "um.hdr")["wavelength_nm"], [400, 500, 600, 700, 800])


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "bad.mat").write_bytes(b"not a mat file at all" * 10)
    (tmp_path / "bad.hdr").write_text("not an ENVI header\n")
    for path, reader in ((tmp_path / "bad.mat", read_mat), (tmp_path / "bad.hdr", read_envi)):
        with pytest.raises(mmtok.MmtokError, match=str(path.name)) as err:
            reader(path)
        assert "\n" not in str(err.value)


def test_real_wavelength_list_is_refused_naming_the_band(pines):
    """Indian Pines' shipped list is not monotonic (AVIRIS spectrometer overlap at band 30)."""
    cube, wl = pines
    with pytest.raises(ModalityError) as err:
        HSICube.from_record({"cube": cube, "wavelength_nm": wl}, sample_id="pines")
    msg = str(err.value)
    assert msg.startswith("sample 'pines': HSICube.wavelength_nm: must be strictly increasing")
    assert "696.50 nm at band 30 followed by 686.91 nm at band 31" in msg and "\n" not in msg


@pytest.mark.parametrize("case, expected", [
    ("count", "HSICube.wavelength_nm: expected one wavelength per band, shape (1, 200), found (1, 199)"),
    ("nan", "HSICube.reflectance: row 0, band 12 ("),
    ("constant", "is constant (0 at all 256 pixels)"),
    ("flat", "HSICube.cube: expected a 3-D cube, found 2-D shape (16, 16) (a 2-D image is not a hyperspectral"),
    ("table", "HSICube.reflectance: expected a cube (b, bands, h, w), found 2-D shape (1, 200)"),
])
def test_bad_cubes_are_clear_one_line_errors(pines, case, expected):
    cube, wl = pines
    wl = _increasing(wl)
    cube = cube.astype(np.float32)
    record = {"cube": cube, "wavelength_nm": wl}
    if case == "count":
        record["wavelength_nm"] = wl[:-1]
    elif case == "nan":
        cube[3, 4, 12] = np.nan
    elif case == "constant":
        cube[..., 20] = 0.0
    elif case == "flat":
        record["cube"] = cube[..., 0]
    if case == "table":
        with pytest.raises(ModalityError) as err:
            HSICube(reflectance=torch.zeros(1, 200), wavelength_nm=torch.as_tensor(wl[None], dtype=torch.float32))
    else:
        with pytest.raises(ModalityError) as err:
            HSICube.from_record(record, sample_id="chip")
        assert str(err.value).startswith("sample 'chip': ")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_nan_and_constant_bands_pass_when_masked(pines):
    cube, wl = pines
    cube = cube.astype(np.float32)
    cube[..., 12] = np.nan
    cube[..., 20] = 0.0
    mask = np.ones(200, bool)
    mask[[12, 20]] = False
    m = HSICube.from_record({"cube": cube, "wavelength_nm": _increasing(wl), "band_mask": mask}, sample_id="chip")
    assert int(m.band_mask.sum()) == 198


def test_auxiliary_layouts_and_channel_counts():
    rng = np.random.default_rng(0)
    rgb_hwc = rng.random((16, 16, 3))
    assert InfraredImage.from_record({"data": rgb_hwc}).pixels.shape == (1, 3, 16, 16)
    assert InfraredImage.from_record({"data": rng.random((16, 16))}).pixels.shape == (1, 1, 16, 16)
    lidar = rng.random((21, 1, 1))  # Houston: 21 attribute-profile channels of one pixel, channels first
    assert ElevationMap.from_record({"data": lidar}).pixels.shape == (1, 21, 1, 1)
    assert ElevationMap.from_record({"data": rng.random((8, 8, 21)), "layout": "hwc"}).pixels.shape == (1, 21, 8, 8)
    with pytest.raises(ModalityError, match=r"sample 'a': InfraredImage.pixels: expected 1 or 3 channels .* found 5"):
        InfraredImage.from_record({"data": rng.random((5, 16, 16))}, sample_id="a")


def test_manifest_names_sample_and_field_of_a_misregistered_auxiliary(tmp_path, pines):
    cube, wl = pines
    np.savez(tmp_path / "a.npz", cube=cube, wavelength_nm=_increasing(wl))
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).random((1, 16, 16)))
    np.save(tmp_path / "off.npy", np.random.default_rng(0).random((1, 15, 16)))
    manifest = {"version": 1, "samples": [
        {"id": "good", "modalities": {"hsi_cube": "a.npz", "infrared_image": "ok.npy"}},
        {"id": "shifted", "modalities": {"hsi_cube": "a.npz", "elevation_map": "off.npy"}},
        {"id": "hsi_only", "modalities": {"hsi_cube": "a.npz"}}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    problems = Manifest.load(tmp_path / "manifest.json").validate()
    assert [(p.sample, p.key) for p in problems] == [("shifted", "elevation_map")]
    assert "ElevationMap.pixels: grid 15 x 16 does not match the HSI cube's 16 x 16" in problems[0].reason

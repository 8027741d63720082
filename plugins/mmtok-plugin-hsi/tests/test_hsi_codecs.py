"""The plugin's codecs pass the conformance kit; spectral resampling is exact where it must be;
a briefly fitted cube codec reconstructs held-out real Indian Pines chips better than at init."""

from pathlib import Path

import numpy as np
import pytest
import torch

import mmtok
from mmtok import ModalityError, fit_codec
from mmtok.testing import check_codec, check_plugin
from mmtok_plugin_hsi import HSICube, plugin, resample_bands, uniform_grid

DATA = Path(__import__("mmtok_plugin_hsi").__file__).parent / "data"
CODECS = ["hsi-cube-fsq", "hsi-cube-continuous", "hsi-pixel-fsq", "infrared-image-fsq",
          "autofluorescence-image-fsq", "thickness-map-fsq", "elevation-map-fsq"]


def test_conformance_kit():
    checked = check_plugin(plugin)
    assert checked == ["modality:hsi_cube", "modality:infrared_image", "modality:autofluorescence_image",
                       "modality:thickness_map", "modality:elevation_map", *(f"codec:{c}" for c in CODECS),
                       "reader:matlab", "reader:envi", "bundle:hsi-guided", "command:hsi"]


def test_pixel_codec_tokenizes_per_pixel_spectra():
    codec = mmtok.get_plugin_manager().build_codec("hsi-pixel-fsq")
    ex = HSICube.example(3, generator=torch.Generator().manual_seed(0))
    pixels = ex.replace(reflectance=ex.reflectance[:, :, 5:6, 7:8].contiguous())
    check_codec(codec, pixels)
    assert codec.grid == (16, 1, 1)
    check_codec(codec, ex)  # spatial: center -> the centre pixel of each 16 x 16 chip
    centre = ex.replace(reflectance=ex.reflectance[:, :, 7:8, 7:8].contiguous())
    assert torch.equal(codec.encode(ex).ids, codec.encode(centre).ids)


def test_resampling_is_exact_for_linear_spectra_and_skips_masked_bands():
    wl = torch.linspace(400, 2500, 50)
    slope = torch.tensor([1.0, -2.0]).view(2, 1, 1, 1)
    cube = (slope * wl.view(1, -1, 1, 1) / 1000).expand(2, 50, 3, 3).clone()
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[:, 20:25] = False
    cube[:, 20:25] = 1e6  # garbage in the masked bands
    target = uniform_grid(420, 2480, 37)
    out = resample_bands(cube, wl, target, mask)
    expected = (slope * target.view(1, -1, 1, 1) / 1000).expand_as(out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_codec_refuses_wrong_chip_size_and_uncovered_range():
    manager = mmtok.get_plugin_manager()
    codec = manager.build_codec("hsi-cube-fsq")
    ex = HSICube.example(1, generator=torch.Generator().manual_seed(0))
    scene = ex.replace(reflectance=ex.reflectance.repeat(1, 1, 2, 2))
    with pytest.raises(ModalityError, match=r"HSICube.reflectance has 32 x 32 pixels, this codec tokenizes 16 x 16 "
                                            r"chips; cut the scene into chips first"):
        codec.encode(scene)
    vnir = ex.replace(wavelength_nm=torch.linspace(380, 1050, 200).unsqueeze(0), band_mask=None)
    with pytest.raises(ModalityError, match=r"valid bands span 380.0–1050.0 nm, the codec's grid 400.0–2500.0 nm"):
        codec.encode(vnir)


def _pines_chips() -> tuple[HSICube, HSICube]:
    """16 x 16 px chips of the real cube: rows 0-79 train, rows 96-143 held out (no shared pixel)."""
    with np.load(DATA / "indian_pines.npz", allow_pickle=False) as d:
        cube = np.moveaxis(d["cube"].astype(np.float32) / 1e4, -1, 0)
    wl = torch.linspace(400.0, 2500.0, 200)  # DATA.md: the shipped list is approximate; only shapes matter here

    def chips(r0, r1):
        tiles = [cube[:, r:r + 16, c:c + 16] for r in range(r0, r1 - 15, 16) for c in range(0, 145 - 16, 16)]
        x = torch.from_numpy(np.stack(tiles))
        return HSICube(reflectance=x, wavelength_nm=wl.expand(len(x), -1).clone())

    return chips(0, 80), chips(96, 144)


def test_fitted_cube_codec_reconstructs_held_out_real_chips():
    train, held_out = _pines_chips()
    codec = mmtok.get_plugin_manager().build_codec("hsi-cube-continuous")
    codec.fit_statistics(train)
    before = mmtok.evaluate_codec(codec, held_out)
    report = fit_codec(codec, train, val=held_out, steps=60, batch_size=16, lr=3e-3, progress=False)
    assert report.nrmse < 0.5 * before.nrmse, (before.nrmse, report.nrmse)
    rebuilt = codec.decode(codec.encode(held_out[:2]))
    assert rebuilt.reflectance.shape == (2, 192, 16, 16)
    assert rebuilt.wavelength_nm[0, 0] == 400.0 and rebuilt.wavelength_nm[0, -1] == 2500.0

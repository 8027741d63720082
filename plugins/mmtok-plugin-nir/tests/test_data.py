"""Real data loaders, bad-input errors, the card's preprocessing and the plugin's conformance."""

import numpy as np
import pytest
import torch

from mmtok import ModalityError
from mmtok.plugins import get_plugin_manager
from mmtok.testing import check_codec, check_plugin
from mmtok_plugin_nir.datasets import NIRDataError, PairedSpectra, load_corn, load_tablet
from mmtok_plugin_nir.modalities import NIRSpectrum
from mmtok_plugin_nir.preprocessing import (augment, baseline_drift, intensity_scale, prepare, resample, snv,
                                         wavelength_shift)


def test_corn_and_tablet_are_the_real_data():
    corn, tablet = load_corn(), load_tablet()
    assert corn.instruments == ("m5", "mp5", "mp6") and corn.n_samples == 80
    assert corn.instrument("m5").shape == (80, 700) and corn.wavelength_nm[[0, -1]].tolist() == [1100, 2498]
    assert corn.property_names == ("Moisture", "Oil", "Protein", "Starch")
    assert 9.3 < corn.property("moisture").min() < corn.property("moisture").max() < 11.0   # documented ranges
    assert -0.04 < corn.instrument("mp6").min() and corn.instrument("mp6").max() < 0.88
    assert tablet.instrument("inst2").shape == (655, 650) and (tablet.split == "Test").sum() == 460
    assert 151 < tablet.property("assay").min() < 200 < tablet.property("assay").max() < 240
    # the same physical sample on two instruments is far more alike than two samples on one
    m5, mp5 = snv(corn.instrument("m5")), snv(corn.instrument("mp5"))
    assert np.abs(m5[0] - mp5[0]).mean() < np.abs(m5[0] - m5[40]).mean() * 3


def _corn_parts():
    corn = load_corn()
    return dict(name="corn", spectra=dict(corn.spectra), wavelength_nm=corn.wavelength_nm.copy(),
                properties=corn.properties, property_names=corn.property_names)


def test_bad_spectra_are_refused_with_where_and_why():
    parts = _corn_parts()
    parts["spectra"]["mp6"] = parts["spectra"]["mp6"].copy()
    parts["spectra"]["mp6"][7, 100] = np.nan
    with pytest.raises(NIRDataError, match=r"corn: instrument 'mp6'.*NaN.*sample\(s\) \[7\]"):
        PairedSpectra(**parts)
    parts = _corn_parts()
    parts["wavelength_nm"][300] = parts["wavelength_nm"][299]
    with pytest.raises(NIRDataError, match=r"strictly increasing.*channel 300"):
        PairedSpectra(**parts)
    parts = _corn_parts()
    parts["spectra"]["mp5"] = parts["spectra"]["mp5"][:79]
    with pytest.raises(NIRDataError, match=r"instrument 'mp5': expected 80 samples.*found 79"):
        PairedSpectra(**parts)
    with pytest.raises(NIRDataError, match="no instrument 'mp7'"):
        load_corn().instrument("mp7")


def test_modality_refuses_unsorted_axes_and_nan():
    good = NIRSpectrum.example(2)
    with pytest.raises(ModalityError, match=r"NIRSpectrum.wavelength_nm: expected a strictly increasing"):
        good.replace(wavelength_nm=good.wavelength_nm.flip(-1))
    with pytest.raises(ModalityError, match=r"NIRSpectrum.values: expected finite"):
        good.replace(values=torch.full_like(good.values, float("nan")))
    with pytest.raises(ModalityError, match=r"NIRSpectrum.domain"):
        good.replace(domain=torch.tensor([0, 5]))


def test_cubic_resampling_keeps_the_range_and_is_exact_on_cubics():
    wl = load_corn().wavelength_nm
    t = (wl - 1800) / 700
    cubic = np.stack([1 + t - 2 * t ** 2 + 0.5 * t ** 3, t ** 3])
    out, grid = resample(cubic, wl, 2048)
    assert out.shape == (2, 2048) and grid[0] == wl[0] and grid[-1] == wl[-1]   # never truncated
    tg = (grid - 1800) / 700
    np.testing.assert_allclose(out[0], 1 + tg - 2 * tg ** 2 + 0.5 * tg ** 3, atol=1e-9)
    x, g = prepare(load_corn().instrument("m5"), wl)
    assert x.shape == (80, 2048) and torch.allclose(x.mean(1), torch.zeros(80), atol=1e-5)
    assert torch.allclose(x.std(1, correction=0), torch.ones(80), atol=1e-4)
    with pytest.raises(NIRDataError, match="strictly increasing"):
        resample(cubic, wl[::-1], 2048)
    with pytest.raises(NIRDataError, match=r"NaN/inf in sample\(s\) \[1\]"):
        resample(np.stack([cubic[0], np.full(700, np.nan)]), wl)


def test_augmentations_follow_the_card():
    g = torch.Generator().manual_seed(0)
    x, _ = prepare(load_corn().instrument("m5")[:16], load_corn().wavelength_nm)
    scaled = intensity_scale(x, generator=g)
    ratio = (scaled / x)[:, 100]
    assert bool(((ratio >= 0.95) & (ratio <= 1.05)).all()) and ratio.std() > 0
    shifted = wavelength_shift(x, max_shift=3, generator=g)
    lags = [min(range(-3, 4), key=lambda s: (torch.roll(x[i], s)[10:-10] - shifted[i, 10:-10]).abs().sum())
            for i in range(16)]
    assert all(-3 <= s <= 3 for s in lags) and len(set(lags)) > 1
    drift = baseline_drift(x, generator=g) - x
    second = drift.diff(n=2, dim=1).abs().max()
    assert second < 1e-5 and drift.abs().max() > 1e-3   # smooth, low-order, not zero
    out = augment(x, generator=g)
    assert out.shape == x.shape and not torch.equal(out, x)


def test_plugin_is_discovered_and_conforms():
    pm = get_plugin_manager()
    assert {"nir_spectrum", "nir_properties"} <= set(pm.tables["modalities"])
    assert {"nir-spectrum-fsq", "nir-spectrum-continuous"} <= set(pm.tables["codecs"])
    import mmtok_plugin_nir.plugin as plugin
    small = {"size": [256]}
    tiny_fm = {"pool": 1, "spectralfm": {"n_points": 256, "patch_size": 32, "d_model": 16, "n_mamba_layers": 1,
                                         "d_state": 4, "expand": 1, "n_heads": 2, "n_transformer_layers": 1,
                                         "z_chem": 8, "z_inst": 4, "fno_modes": 4, "fno_width": 4,
                                         "wavelet_levels": 2}}
    check_plugin(plugin, codec_overrides={"nir-spectrum-fsq": small, "nir-spectrum-continuous": small,
                                          "nir-spectralfm-tokens": tiny_fm})


def test_codec_on_real_spectra():
    """Decode gives the 2048-point SNV spectrum on the sample's own resampled axis."""
    corn, _ = load_corn().to_modalities("m5", np.arange(3))
    codec = get_plugin_manager().build_codec("nir-spectrum-continuous")
    check_codec(codec, corn)
    out = codec.decode(codec.encode(corn), **codec.passthrough_fields(corn))
    assert out.values.shape == (3, 2048) and out.wavelength_nm[0, -1] == pytest.approx(2498)

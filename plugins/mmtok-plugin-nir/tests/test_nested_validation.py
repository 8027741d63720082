"""Hyperparameters chosen inside the calibration / transfer samples: the property heads on frozen
features, PDS's window and latent variables, di-PLS's l; and the benchmark's per-method options."""

import numpy as np
import pytest

from mmtok_plugin_nir.baselines import TransferInputError, TransferTask, make_method
from mmtok_plugin_nir.benchmark import default_pairs, method_factory
from mmtok_plugin_nir.calibration_heads import MLPHead, make_head, select_head, validation_rmse
from mmtok_plugin_nir.cli import _value
from mmtok_plugin_nir.datasets import NIRDataError, load_corn, load_tablet
from mmtok_plugin_nir.protocol import calibration_split, draw_transfer_samples, make_task


def _linear(n: int, f: int = 6, noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, f))
    return z, z @ np.arange(1.0, f + 1) + noise * rng.normal(size=n)


@pytest.mark.parametrize("name", ["ridge", "pls", "mlp"])
def test_each_head_fits_a_linear_property(name):
    z, y = _linear(80)
    head = (MLPHead(steps=150) if name == "mlp" else make_head(name)).fit(z[:60], y[:60])
    rmse = np.sqrt(np.mean((head.predict(z[60:]) - y[60:]) ** 2))
    assert rmse < 0.25 * y.std(), rmse


def test_select_head_validates_on_the_target_standards_when_there_are_five():
    z_cal, y_cal = _linear(40, seed=1)
    z_std, y_std = _linear(10, seed=2)
    # the target standards follow another relation: a head validated on them must see that
    y_std = -y_std
    both = validation_rmse("ridge", z_cal, y_cal, z_std, y_std)
    source_only = validation_rmse("ridge", z_cal, y_cal, z_std[:4], y_std[:4])   # < 5: CV over calibration
    assert both > 3 * source_only
    head, scores = select_head(("ridge", "pls"), z_cal, y_cal, z_std, y_std)
    assert set(scores) == {"ridge", "pls"} and head.name == min(scores, key=scores.get)
    with pytest.raises(TransferInputError, match="head: expected one of"):
        make_head("svm")


def _corn_task(n: int, prop: str = "Moisture"):
    corn = load_corn()
    pool, _ = calibration_split(corn)
    return make_task(corn, "m5", "mp6", prop, pool, draw_transfer_samples(pool, n, 0))


def test_pds_and_dipls_choose_their_hyperparameters_on_the_standards_only():
    task = _corn_task(10)
    pds = make_method("pds").fit(task)
    assert len(pds.validation_) == 8 and pds.chosen_["half_window"] in (2, 5, 8, 12)
    assert f"w{pds.chosen_['half_window']}_lv{pds.chosen_['transfer_components']}" == min(
        pds.validation_, key=pds.validation_.get)
    fixed = make_method("pds", half_window=5, transfer_components=1).fit(task)
    assert fixed.chosen_ == {"half_window": 5, "transfer_components": 1} and not hasattr(fixed, "validation_")
    dipls = make_method("dipls").fit(task)
    assert len(dipls.validation_) == 7 and dipls.l_ == min(dipls.validation_, key=dipls.validation_.get)
    # the choice is scored on the standards' labels (the only labels of the target instrument it is
    # given): shuffling y_std changes every score, not the fits (di-PLS never fits on y_std)
    shuffled = make_method("dipls").fit(TransferTask(task.X_cal, task.y_cal, task.X_source_std, task.X_target_std,
                                                     task.y_std[::-1].copy(), task.X_target_unlabeled))
    assert all(shuffled.validation_[l] != dipls.validation_[l] for l in dipls.validation_)
    np.testing.assert_array_equal(make_method("dipls", l=shuffled.l_).fit(task).b_, shuffled.b_)
    # too few standards to validate: the prior choices
    small = _corn_task(3)
    assert make_method("pds").fit(small).chosen_ == {"half_window": 5, "transfer_components": 1}
    assert make_method("dipls").fit(small).l_ == 1e5


def test_benchmark_pairs_options_and_property_names():
    corn, tablet = load_corn(), load_tablet()
    assert default_pairs(corn) == [("m5", "mp5"), ("m5", "mp6"), ("mp5", "mp6")]
    assert default_pairs(tablet) == [(tablet.instruments[0], tablet.instruments[1]),
                                     (tablet.instruments[1], tablet.instruments[0])]
    with pytest.raises(TransferInputError, match=r"pds options: expected some of .*half_window.*found \['window'\]"):
        method_factory("pds", corn, window=5)
    with pytest.raises(TransferInputError, match="needs a pretrained SpectralFM checkpoint"):
        method_factory("spectralfm", corn)
    with pytest.raises(TransferInputError, match="method: expected one of"):
        method_factory("svr", corn)
    with pytest.raises(NIRDataError, match=r"no property 'fat'; properties are \['Moisture'"):
        corn.property_name("fat")
    assert corn.property_name("oil") == "Oil"
    assert _value("12") == 12 and _value("1e-3") == 1e-3 and _value("auto") == "auto"
    assert _value("ridge/pls") == ("ridge", "pls") and _value("z_chem+tokens") == "z_chem+tokens"


def test_a_spectrum_without_an_axis_is_a_clear_error_for_the_codecs():
    import torch

    from mmtok import ModalityError
    from mmtok_plugin_nir.modalities import NIRSpectrum

    ids = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ModalityError, match=r"NIRSpectrum.wavelength_nm: expected Float.*found NoneType"):
        NIRSpectrum(values=torch.rand(2, 10), wavelength_nm=None, instrument=ids, domain=ids)
    with pytest.raises(ModalityError, match=r"NIRSpectrum.wavelength_nm: expected finite values"):
        NIRSpectrum(values=torch.rand(2, 10), wavelength_nm=torch.full((2, 10), float("nan")), instrument=ids,
                    domain=ids)

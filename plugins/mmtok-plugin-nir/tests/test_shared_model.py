"""SpectralFM as an mmtok codec and the nir-calibration bundle on the shared transformer
(`mmtok_plugin_nir.shared_model`): conformance of the codec on a tiny saved SpectralFM, its
determinism, shapes and per-sample presence of the bundle, and one real-Corn transfer check."""

import numpy as np
import pytest
import torch

from mmtok import CodecError, get_plugin_manager
from mmtok.testing import check_codec
from mmtok_plugin_nir.baselines import TransferInputError, TransferTask, make_method
from mmtok_plugin_nir.codecs import SpectralFMCodec
from mmtok_plugin_nir.datasets import load_corn
from mmtok_plugin_nir.model.spectralfm import SpectralFM, SpectralFMConfig
from mmtok_plugin_nir.modalities import NIRSpectrum
from mmtok_plugin_nir.protocol import TransferSetting, run_transfer
from mmtok_plugin_nir.shared_model import (PROPERTY_KEY, SPECTRUM_KEY, SharedModelTransfer, spectrum_tokens,
                                           training_selection)

TINY = SpectralFMConfig(n_points=256, d_model=32, n_mamba_layers=2, d_state=8, n_transformer_layers=1,
                        n_heads=4, z_chem=16, z_inst=8, n_instruments=3, fno_modes=8, fno_width=8)
FAST = {"steps": 40, "batch_size": 32, "d_model": 16, "num_heads": 2, "encoder_depth": 1}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained SpectralFM saved as a run directory (model.safetensors + model.json)."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("spectralfm")
    SpectralFM(TINY).save(run / "model.safetensors")
    return run


@pytest.fixture(scope="module")
def corn():
    return load_corn()


def _codec(checkpoint, pool=1, **config):
    return get_plugin_manager().build_codec("nir-spectralfm-tokens", {"checkpoint": str(checkpoint), "pool": pool,
                                                                      **config})


def test_codec_conforms_on_a_saved_spectralfm(checkpoint, corn):
    codec = _codec(checkpoint, pool=2)
    assert codec.grid == (256 // 16 // 2 + 1,) and codec.token_dim == 32 and codec.vocab_size is None
    real, _ = corn.to_modalities("m5", np.arange(4))
    check_codec(codec, real)                                         # fitted on real spectra
    # the weights are the checkpoint's, not a fresh initialisation
    saved = SpectralFM.load(checkpoint / "model.safetensors")
    assert torch.equal(codec.spectralfm.patch_head.weight.float(), saved.patch_head.weight)


def test_codec_tokens_are_deterministic_and_carry_z_chem(checkpoint, corn):
    real, _ = corn.to_modalities("m5", np.arange(8))
    a, b = _codec(checkpoint), _codec(checkpoint)
    a.fit_statistics(real)
    b.fit_statistics(real)
    s = a.encode(real)
    assert s.values.shape == (8, 256 // 16 + 1, 32)
    assert torch.equal(s.values, a.encode(real).values) and torch.equal(s.values, b.encode(real).values)
    assert torch.equal(a.encode(real[3]).values[0], s.values[3])    # batch-independent (float64 SpectralFM)
    # standardised: every used (token, dim) has mean 0 and spread 1 over the fitted batch
    used = a.token_std > 1e-6
    assert torch.allclose(s.values.mean(0)[used], torch.zeros(()), atol=1e-4)
    assert torch.allclose(s.values.std(0, correction=0)[used], torch.ones(()), atol=1e-3)
    # the last token is the posterior mean of z_chem (zero-padded to the token width)
    with torch.no_grad():
        mu = a.spectralfm.double()(a.to_tensor(real).double(), a.passthrough_fields(real)["wavelength_nm"].double(),
                                   real.domain).mu_chem
    raw = a.raw_tokens(real)
    assert torch.allclose(raw[:, -1, :TINY.z_chem], mu) and bool((raw[:, -1, TINY.z_chem:] == 0).all())


def test_codec_refuses_a_missing_checkpoint_and_a_bad_pool(tmp_path, checkpoint):
    with pytest.raises(CodecError, match="found no weights"):
        _codec(tmp_path / "nothing")
    with pytest.raises(CodecError, match="pool 3 does not divide the 16 patches"):
        _codec(checkpoint, pool=3)
    with pytest.raises(CodecError, match="frozen"):
        _codec(checkpoint)(NIRSpectrum.example(2))


def _task(corn, n_cal=20, n_std=4, n_unl=12):
    xs, xt, y = corn.instrument("m5"), corn.instrument("mp6"), corn.property("Moisture")
    return TransferTask(X_cal=xs[:n_cal], y_cal=y[:n_cal], X_source_std=xs[n_cal:n_cal + n_std],
                        X_target_std=xt[n_cal:n_cal + n_std], y_std=y[n_cal:n_cal + n_std],
                        X_target_unlabeled=xt[40:40 + n_unl])


def test_bundle_trains_and_predicts_with_the_right_shapes(checkpoint, corn):
    method = SharedModelTransfer(checkpoint, corn.wavelength_nm, patch_tokens=8, bins=6, **FAST)
    task = _task(corn)
    method.fit(task)
    specs = method.model.streams
    assert list(specs) == [SPECTRUM_KEY, PROPERTY_KEY] == list(get_plugin_manager().bundle("nir-calibration").streams)
    assert specs[SPECTRUM_KEY].grid == (9,) and specs[SPECTRUM_KEY].dim == 32 and specs[PROPERTY_KEY].vocab_size == 6
    proba = method.predict_proba(corn.instrument("mp6")[60:65])
    assert proba.shape == (5, 6) and torch.allclose(proba.sum(1), torch.ones(5, dtype=torch.float64))
    pred = method.predict(corn.instrument("mp6")[60:65])
    lo, hi = float(method.bin_values.min()), float(method.bin_values.max())
    assert pred.shape == (5,) and np.all((pred >= lo - 1e-9) & (pred <= hi + 1e-9))
    assert method.history[-1]["ce"] < method.history[0]["ce"]      # it learned something about the property
    # same task, same seed: same predictions (cached tokens, seeded masks)
    again = SharedModelTransfer(checkpoint, corn.wavelength_nm, patch_tokens=8, bins=6, **FAST).fit(task)
    np.testing.assert_allclose(again.predict(corn.instrument("mp6")[60:65]), pred, rtol=1e-6)
    with pytest.raises(TransferInputError, match="divisor of the checkpoint's 16 patches"):
        SharedModelTransfer(checkpoint, corn.wavelength_nm, patch_tokens=5).fit(task)


def test_unlabelled_spectra_contribute_no_property_targets(checkpoint, corn):
    g = torch.Generator().manual_seed(0)
    labelled = torch.tensor([True, False, True, False, False])
    inputs, targets = training_selection(labelled, 9, 0.5, g)
    assert torch.equal(targets[:, 9], labelled) and not bool(inputs[:, 9].any())   # property: target iff present
    assert not bool((inputs & targets).any()) and bool(targets[~labelled, :9].any(1).all())
    # behaviour: whatever ids the absent property tokens hold, the loss and its gradients are the same
    method = SharedModelTransfer(checkpoint, corn.wavelength_nm, patch_tokens=8, bins=6, **FAST).fit(_task(corn))
    method.model.train()
    task = _task(corn)
    spectra = method._standardise(spectrum_tokens(method.codec, task.X_target_unlabeled, corn.wavelength_nm), "target")
    labelled = torch.arange(len(spectra)) % 3 == 0
    ids = torch.zeros(len(spectra), dtype=torch.long)
    grads = []
    for fill in (0, 5):
        ids_f = torch.where(labelled, ids, fill)
        method.model.zero_grad()
        total, ce, mse = method.loss(spectra, ids_f, labelled, torch.Generator().manual_seed(1))
        total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in method.model.parameters() if p.grad is not None]))
        assert ce > 0 and mse > 0
    assert torch.equal(grads[0], grads[1])
    # and with no labelled sample at all, there is no property loss
    _, ce, _ = method.loss(spectra, ids, torch.zeros(len(spectra), dtype=torch.bool), torch.Generator().manual_seed(1))
    assert float(ce) == 0.0


def test_shared_model_beats_pls_on_source_on_real_corn(checkpoint, corn):
    """m5 -> mp6 Moisture, N = 10, 2 draws: the shared model with the tiny untrained SpectralFM's
    tokens (a fixed random feature map: no pretraining in this test) beats PLS calibrated on the
    source instrument without transfer."""
    setting = TransferSetting("corn", "m5", "mp6", "Moisture", 10, repeats=2)
    pls = run_transfer(corn, setting, lambda: make_method("pls-source"))
    shared = run_transfer(corn, setting, lambda: SharedModelTransfer(checkpoint, corn.wavelength_nm, patch_tokens=8,
                                                                     steps=150))
    assert shared.mean("rmsep") < 0.5 * pls.mean("rmsep"), (shared.mean("rmsep"), pls.mean("rmsep"))
    assert shared.mean("rmsep") < float(np.std(corn.property("Moisture")))   # better than predicting the mean

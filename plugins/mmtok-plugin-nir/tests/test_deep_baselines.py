"""The deep calibration-transfer baselines (cnn, transformer, lora-ct): option errors, shapes,
determinism and the source-model cache on small synthetic spectra (tiny options), then one check on
the real Corn data (m5 -> mp6, Moisture, N = 10, default options) against the source PLS model."""

import numpy as np
import pytest
import torch

import mmtok_plugin_nir.deep_baselines as db
from mmtok_plugin_nir.baselines import TransferInputError, TransferTask, make_method
from mmtok_plugin_nir.datasets import load_corn
from mmtok_plugin_nir.deep_baselines import DEEP_METHODS, make_deep_method
from mmtok_plugin_nir.protocol import TransferSetting, run_transfer

K = 96
WL = np.linspace(1100.0, 2000.0, K)
TINY = {"n_points": 64, "max_steps": 20, "eval_every": 5}
TINY_FT = {"ft_steps": (0, 2, 4), "folds": 3}
TINY_TR = {"patch_size": 16, "d_model": 16, "n_heads": 2}
OPTIONS = {"cnn": {**TINY, **TINY_FT, "channels": (2, 4), "hidden": 8},
           "transformer": {**TINY, **TINY_TR},
           "lora-ct": {**TINY, **TINY_TR, **TINY_FT, "lora_rank": 4}}


def _spectra(c: np.ndarray, shift: float, rng) -> np.ndarray:
    """Two Gaussian bands with concentrations c (n, 2) on a sloped baseline; `shift` moves the
    bands (nm) as a second instrument would. (n, K)."""
    bands = [np.exp(-0.5 * ((WL - mu - shift) / 40.0) ** 2) for mu in (1400.0, 1700.0)]
    return 0.3 + 1e-4 * WL + c @ np.stack(bands) + 0.002 * rng.standard_normal((c.shape[0], K))


def _task(n_cal: int = 24, n_std: int = 6, seed: int = 0) -> tuple[TransferTask, np.ndarray, np.ndarray]:
    """A synthetic task and 8 target-instrument test spectra with their y."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.2, 1.0, (n_cal + 8, 2))
    y = c[:, 0] * 10
    xs, xt = _spectra(c, 0.0, rng), _spectra(c, 8.0, rng)
    std = np.arange(n_std)
    task = TransferTask(xs[:n_cal], y[:n_cal], xs[std], xt[std], y[std], xt[:n_cal])
    return task, xt[n_cal:], y[n_cal:]


@pytest.fixture(autouse=True)
def _fresh_cache_one_thread():
    """An empty source-model cache, and one torch thread: on a busy 2-core machine two threads
    spinning against other processes made these small models ~10x slower."""
    db.clear_cache()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    db.clear_cache()


def test_unknown_method_and_options_are_clear_errors():
    with pytest.raises(TransferInputError, match=r"expected one of \['cnn', 'transformer', 'lora-ct'\]"):
        make_deep_method("resnet", WL)
    with pytest.raises(TransferInputError, match=r"unknown option\(s\) \['rank'\]; accepted options: .*lora_rank"):
        make_deep_method("lora-ct", WL, rank=4)
    with pytest.raises(TransferInputError, match="option lora_rank: expected a positive integer, found 0"):
        make_deep_method("lora-ct", WL, lora_rank=0)
    with pytest.raises(TransferInputError, match="option patch_size: expected a divisor of n_points = 512"):
        make_deep_method("transformer", WL, patch_size=30)
    with pytest.raises(TransferInputError, match="option ft_steps"):
        make_deep_method("cnn", WL, ft_steps=(0,))
    with pytest.raises(TransferInputError, match="unknown option"):      # cnn has no transformer options
        make_deep_method("cnn", WL, d_model=16)
    with pytest.raises(TransferInputError, match="wavelength_nm"):
        make_deep_method("cnn", WL[:, None])


@pytest.mark.parametrize("name", DEEP_METHODS)
def test_fit_predict_shapes_determinism_and_input_errors(name):
    task, x_test, _ = _task()
    a = make_deep_method(name, WL, **OPTIONS[name])
    assert a.name == name and a.min_pairs == 1
    with pytest.raises(TransferInputError, match="call fit"):
        a.predict(x_test)
    pred = a.fit(task).predict(x_test)
    assert pred.shape == (8,) and pred.dtype == np.float64 and np.isfinite(pred).all()
    db.clear_cache()   # a second fit from nothing gives the same numbers
    again = make_deep_method(name, WL, **OPTIONS[name]).fit(task).predict(x_test)
    np.testing.assert_array_equal(pred, again)
    other_seed = make_deep_method(name, WL, **OPTIONS[name], seed=1).fit(task).predict(x_test)
    assert not np.allclose(pred, other_seed)
    with pytest.raises(TransferInputError, match=f"expected {K} channels"):
        a.predict(x_test[:, :-1])
    no_pairs = TransferTask(task.X_cal, task.y_cal, task.X_cal[:0], task.X_cal[:0], task.y_cal[:0])
    with pytest.raises(TransferInputError, match="expected at least 1 paired transfer standard"):
        make_deep_method(name, WL, **OPTIONS[name]).fit(no_pairs)


@pytest.mark.parametrize("name", DEEP_METHODS)
def test_one_standard_uses_the_fallback(name):
    task, x_test, _ = _task(n_std=1)
    m = make_deep_method(name, WL, **OPTIONS[name]).fit(task)
    assert np.isfinite(m.predict(x_test)).all()
    if name != "transformer":
        assert m.selection_["cv_mse"] is None and m.selection_["steps"] == 2


def test_source_model_is_cached_and_shared_by_transformer_and_lora_ct():
    task, x_test, _ = _task()
    first = make_deep_method("lora-ct", WL, **OPTIONS["lora-ct"]).fit(task)
    assert len(db._SOURCES) == 1
    other_draw, _, _ = _task(seed=0)
    other_draw.X_target_std = other_draw.X_target_std[::-1].copy()   # different standards, same calibration
    second = make_deep_method("lora-ct", WL, **OPTIONS["lora-ct"]).fit(other_draw)
    assert second.source_ is first.source_
    scratch = make_deep_method("transformer", WL, **OPTIONS["transformer"]).fit(task)
    assert scratch.source_ is first.source_ and len(db._SOURCES) == 1       # same architecture and options
    make_deep_method("transformer", WL, **OPTIONS["transformer"], lr=3e-3).fit(task)
    make_deep_method("cnn", WL, **OPTIONS["cnn"]).fit(task)
    assert len(db._SOURCES) == 3
    src = first.source_
    assert 0 <= src.steps <= TINY["max_steps"] and len(src.val_curve) == TINY["max_steps"] // TINY["eval_every"] + 1


def test_lora_ct_trains_only_the_adapters_and_the_head_bias():
    task, _, _ = _task()
    m = make_deep_method("lora-ct", WL, **{**OPTIONS["lora-ct"], "ft_steps": (4,)}).fit(task)
    assert m.selection_["steps"] == 4
    src = m.source_.state
    state = m.model.state_dict()
    changed = set()
    for k, v in state.items():
        base = k.replace(".base.", ".")
        if "lora_" in k:
            continue
        assert base in src, k
        if not torch.equal(v, src[base]):
            changed.add(base)
    assert changed == {"head.bias"}
    lora_b = [v for k, v in state.items() if k.endswith("lora_B")]
    assert len(lora_b) == 2 * 3 and any(b.abs().sum() > 0 for b in lora_b)   # q, k, v of 2 layers, trained


def test_cnn_fine_tuning_changes_only_the_head():
    task, _, _ = _task()
    m = make_deep_method("cnn", WL, **{**OPTIONS["cnn"], "ft_steps": (4,)}).fit(task)
    src, state = m.source_.state, m.model.state_dict()
    assert all(torch.equal(state[k], src[k]) for k in src if k.startswith("features."))
    assert any(not torch.equal(state[k], src[k]) for k in src if k.startswith("head."))


def test_each_deep_method_transfers_on_corn():
    """m5 -> mp6 Moisture, N = 10, one draw, default options: the source PLS model on target
    spectra is off by ~1.8 (a bias); every deep method with its transfer step is far better."""
    corn = load_corn()
    setting = TransferSetting("corn", "m5", "mp6", "Moisture", 10, repeats=1)
    base = run_transfer(corn, setting, lambda: make_method("pls-source")).mean("rmsep")
    assert base > 1.5
    for name in DEEP_METHODS:
        rmsep = run_transfer(corn, setting, lambda: make_deep_method(name, corn.wavelength_nm)).mean("rmsep")
        assert rmsep < 0.3 * base, (name, rmsep, base)

"""The generic image and volume codecs learn real data (chest X-rays, abdominal CT):
held-out error after a short fit is far below the untrained codec's."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fit_real", ROOT / "examples" / "families" / "fit_real.py")
fit_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit_real)


@pytest.mark.parametrize("name, config, loader, limit", [
    # measured with 150 steps: X-rays 0.31, CT blocks 0.38 (600 steps: 0.215 / 0.324)
    ("image-patch", {"channels": 1, "size": [28, 28], "patch": [4, 4]}, fit_real.xrays, 0.40),
    ("volume-patch", {"channels": 1, "size": [8, 16, 16], "patch": [4, 8, 8]}, fit_real.ct_blocks, 0.5),
])
def test_generic_codecs_learn_real_data(name, config, loader, limit):
    train, test = loader()
    before, after = fit_real.fit(name, config, train, test, steps=150, progress=False)
    assert before.nrmse > 0.9
    assert after.nrmse < limit, after.summary()
    assert after.codes_used > 20


def test_ct_blocks_keep_held_out_slices_apart():
    train, test = fit_real.ct_blocks()
    assert train.values.shape == (84, 1, 8, 16, 16) and test.values.shape == (42, 1, 8, 16, 16)
    assert float(train.values.min()) >= -1100 and float(train.values.max()) <= 1300  # HU range of the file

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mmtok.plugins

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _fresh_plugin_manager():
    """Each test sees the installed plugins freshly loaded (some tests add fake ones)."""
    mmtok.plugins.reset_plugin_manager()
    yield
    mmtok.plugins.reset_plugin_manager()


@pytest.fixture(scope="session")
def corn():
    """Real NIR corn spectra (80 x 700, instrument m5) and properties."""
    with np.load(DATA / "corn_m5_mp5.npz", allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

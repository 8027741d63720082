import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# each test sees the installed plugins freshly loaded and torch seeded: `mmtok.testing.fresh_plugins`,
# turned on for every test by pyproject.toml's `usefixtures`; hypothesis draws the same examples
# every run (derandomize: seeded from each test), and keeps no example database between runs
settings.register_profile("mmtok", derandomize=True, database=None)
settings.load_profile("mmtok")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def corn():
    """Real NIR corn spectra (80 x 700, instrument m5) and properties."""
    with np.load(DATA / "corn_m5_mp5.npz", allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture
def python() -> str:
    return sys.executable

import pytest
import torch

import mmtok.plugins


@pytest.fixture(autouse=True)
def _fresh():
    """Each test sees the installed plugins freshly loaded, with a fixed torch seed."""
    mmtok.plugins.reset_plugin_manager()
    torch.manual_seed(0)
    yield
    mmtok.plugins.reset_plugin_manager()

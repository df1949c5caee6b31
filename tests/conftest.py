import os
import warnings

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

FULL = os.environ.get("DGM_PYRO_FULL_TESTS") == "1"

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


def pytest_collection_modifyitems(config, items):
    if FULL or config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow: set DGM_PYRO_FULL_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_clear():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.clear_param_store()

import os

# No hub, no telemetry, whatever shell the tests run from.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import torch  # noqa: E402

# Triton kernels run on the CPU through Triton's interpreter; the flag must be set before they are
# defined. On a GPU machine the real kernels run.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from tests import tiny_models  # noqa: E402


@pytest.fixture
def sd1_components():
    return tiny_models.sd1_components()


@pytest.fixture
def sdxl_components():
    return tiny_models.sdxl_components()


@pytest.fixture
def pixart_components():
    return tiny_models.pixart_components()

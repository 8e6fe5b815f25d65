"""Test-wide settings: the Triton interpreter on CPU-only machines, and the `gpu` marker.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection, before any test
module imports fastenc.kernels. Nothing here touches a CUDA device at import time.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

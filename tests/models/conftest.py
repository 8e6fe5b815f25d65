"""Model tests run torch single-threaded: the shapes are tiny, and on a loaded 2-core CI machine intra-op threads
make them several times slower. The previous thread count is restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

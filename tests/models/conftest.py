"""Model tests run torch single-threaded: the shapes are tiny, and on a loaded 2-core CI machine intra-op threads
make them several times slower. The previous thread count is restored after each test. `fresh_table`: the swap
table rebuilt for a test that fakes a transformers forward, and again after it."""

import pytest
import torch

from fastenc import autotune
from fastenc.models import swaps


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_table():
    """The swap table rebuilt for the test and again after it (the faked forward is gone by then)."""

    def reset():
        swaps._swaps = None
        swaps.refused.clear()
        swaps._ATTENTION_WRAPPERS.clear()
        autotune._notes.clear()

    reset()
    yield
    reset()

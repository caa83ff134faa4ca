"""Test setup: Triton runs in its interpreter on CPU tensors (CI has no GPU).

TRITON_INTERPRET must be set before any @triton.jit function is defined, so it is set here,
before the package is imported by any test module.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data folder {SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny models on a shared few-core machine: one torch thread avoids OpenMP spin-wait stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

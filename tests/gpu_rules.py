"""The rule that keeps a GPU test run honest (used by conftest.py under POTKERNELS_REQUIRE_GPU=1).

A module of its own, not in conftest.py: tests import it by name, and ``conftest`` is not a unique module
name once tests/vllm_engine/ has a conftest of its own.
"""
from __future__ import annotations


def gpu_skip_reason(longrepr) -> str | None:
    """The reason of a skip that a GPU run must not take (it names the GPU or CUDA), else None."""
    reason = str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)
    return reason if ("gpu" in reason.lower() or "cuda" in reason.lower()) else None

"""Calibration results that do not depend on the CPU thread count.

Measured with torch 2.13 on CPU (MKL + OpenMP), 1 vs 2 threads: elementwise and row-wise ops,
reductions along a dimension, large matmuls and autograd give identical bits; three things do not:
whole-tensor reductions (``.sum()``, ``mse_loss``: the partial sums are split per thread), LAPACK
(``cholesky``, ``cholesky_inverse``, ``solve``, ``inv``) and MKL's gemm for a few rows (M ≲ 16).
Their results feed decisions (GPTQ's rounding, which scale-fit candidate wins, whether refine's
scales are kept), so a one-ulp difference changed most of a checkpoint's codes. The first two run
under :func:`serial` (one thread: they are small next to the matmuls around them); the last is
fixed by MKL's strict conditional numerical reproducibility, ``MKL_CBWR=AUTO,STRICT``, which MKL
reads when it first runs: ``python -m calibration`` sets it (unless the user did) before any matmul; a
program calling :func:`calibrate_model` directly sets it itself (``MKL_CBWR=AUTO,STRICT python …``),
since it changes the bits of every matmul in the process.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

MKL_CBWR = "AUTO,STRICT"


def request_reproducible_mkl() -> None:
    """Ask MKL for thread-count-independent gemm (effective only before MKL's first call)."""
    os.environ.setdefault("MKL_CBWR", MKL_CBWR)


@contextlib.contextmanager
def serial() -> Iterator[None]:
    """Run the enclosed torch CPU ops on one thread (a reduction order that does not depend on the
    thread count), restoring the caller's thread count afterwards."""
    import torch

    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)

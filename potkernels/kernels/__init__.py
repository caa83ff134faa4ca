"""Triton kernels for packed PoT / uniform-int weights, one file per regime (gemlite-style).

* ``decode.py``      @triton.jit helpers: gather codes, PoT decode (±2^(E − qmax) by OR, times the
                     stored top level S_top), bit-exact int decode;
* ``dequant.py``     packed → ``[N, K]`` fp16/bf16 (bit-exact);
* ``gemv.py``        M = 1, split-K matvec with fp32 accumulation;
* ``small_batch.py`` M = 2 … 64, split-K ``tl.dot``;
* ``gemm.py``        large M, tiled ``tl.dot``;
* ``decode_bench.py`` decode-bound kernels for the benchmark (decode in registers, reduce);
* ``configs.py`` + ``configs/*.json`` launch configs per GPU; ``tune.py`` optional autotuning.

``pot_matmul_triton`` / ``int_matmul_triton`` dispatch by M (:func:`pick_regime`).
"""
from .api import (
    Packed,
    int_dequantize_triton,
    int_matmul_triton,
    matmul,
    pick_regime,
    pot_dequantize_triton,
    pot_matmul_triton,
)

__all__ = [
    "Packed", "int_dequantize_triton", "int_matmul_triton", "matmul", "pick_regime",
    "pot_dequantize_triton", "pot_matmul_triton",
]

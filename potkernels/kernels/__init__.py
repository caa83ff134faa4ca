"""Triton kernels for packed PoT / uniform-int weights, one file per regime (gemlite-style): each regime
file holds its kernel, its launcher (``launch``) and its tuning candidates (``candidates``).

* ``decode.py``      @triton.jit helpers: one pair decoder per code (inline PTX + pure-Triton twin),
                     gather codes, bit-exact PoT / int decode;
* ``dequant.py``     packed → ``[N, K]`` fp16/bf16 (bit-exact);
* ``gemv.py``        M = 1 (and a few fp16 rows), pipelined split-K matvec on CUDA cores;
* ``small_batch.py`` M = 2 … 512, swap-AB split-K ``tl.dot``;
* ``gemm.py``        large M, tiled ``tl.dot``;
* ``mma_tile.py``    the decoded weight tile of the two ``tl.dot`` regimes; ``splitk.py`` the split-K reduction;
* ``launch.py``      host helpers the launchers share; ``packed.py`` the checked packed tensors;
* ``api.py``         dispatch by M and the entry points ``potkernels.ops`` calls;
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

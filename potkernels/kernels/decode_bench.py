"""Decode-bound kernels for the benchmark: decode in registers and reduce, no output traffic.

A stand-alone dequant kernel is bound by the 2 bytes/weight it writes, which hides the decode.
Here each program takes one ``[BLOCK_R rows of 32 k, BLOCK_N]`` tile and decodes it ``reps``
times with :func:`gemv.rows_dot` (the exact code of the M = 1 kernel), XOR-ing the loop counter
into the code words so the compiler cannot hoist the decode out of the loop; the packed words
come from L1 after the first pass. Only a per-program checksum is written. PoT and int run the
same structure, so weights/s compares the decoders themselves.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .api import Packed
from .gemv import rows_dot


@triton.jit
def decode_reduce_kernel(x_ptr, q_ptr, sg_ptr, sc_ptr, z_ptr, out_ptr, N, K, KP, G, reps,
                         IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_n = offs_n < N
    mask_r = offs_r < KP // 32
    acc = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    for rep in range(reps):
        acc = rows_dot(acc, x_ptr, q_ptr, sg_ptr, sc_ptr, z_ptr, offs_r, mask_r, offs_n, mask_n,
                       N, K, KP, G, rep, IS_POT, W0, W1, False, False)
    pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(out_ptr + pid, tl.sum(tl.sum(acc, axis=1), axis=0))


def decode_reduce(w: Packed, x: torch.Tensor, reps: int, block_r: int = 8, block_n: int = 128,
                  num_warps: int = 4) -> torch.Tensor:
    """Run the decode-bound kernel: ``reps × N × K`` weights decoded; returns the checksums."""
    if x.shape != (w.K,):
        raise ValueError(f"x must be [{w.K}], got {list(x.shape)}")
    grid = (triton.cdiv(w.N, block_n), triton.cdiv(w.KP // 32, block_r))
    out = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=w.device)
    decode_reduce_kernel[grid](x, *w.args(), out, w.N, w.K, w.KP, w.G, reps,
                               IS_POT=w.is_pot, W0=w.W0, W1=w.W1, BLOCK_R=block_r, BLOCK_N=block_n,
                               num_warps=num_warps)
    return out

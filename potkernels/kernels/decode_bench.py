"""Decode-bound kernels for the benchmark: decode in registers and reduce, no output traffic.

A stand-alone dequant kernel is bound by the 2 bytes/weight it writes, which hides the decode.
Here each program takes one column block and ``RUNS`` runs of 32 k and decodes them ``reps`` times
with :func:`gemv.run_dot` (the exact decode + fp16x2 dot of the M = 1 kernel), XOR-ing the loop
counter into x so the compiler cannot hoist the decode out of the loop; the packed words come
from L1/L2 after the first pass. Only a per-program checksum is written. PoT and int run the
same structure, so weights/s compares the decoders themselves.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .decode import int_zero_consts
from .gemv import fold2, left_pairs, run_dot
from .packed import Packed

DEFAULT_CONFIG = {"RUNS": 4, "BLOCK_N": 512, "num_warps": 4}


@triton.jit
def decode_reduce_kernel(x_ptr, q_ptr, sc_ptr, z_ptr, out_ptr, N, K, KP, G, reps,
                         IS_POT: tl.constexpr, BITS: tl.constexpr, USE_ASM: tl.constexpr, LEFT_PAIRS: tl.constexpr,
                         RUNS: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    run0 = tl.program_id(1) * RUNS
    UNITS_PER_RUN: tl.constexpr = 1 if BITS == 3 else BITS
    s = tl.load(sc_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if IS_POT:  # lanes are ±2^(E − qmax): S_top multiplies them as stored
        zcs = (s,)
    else:
        s = s * (2.0 ** BITS)  # lanes are (q − z)·2^−bits
        zcs = int_zero_consts(tl.load(z_ptr + offs_n, mask=mask_n, other=0).to(tl.int32), BITS, BITS, True, USE_ASM)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for rep in range(reps):
        for r in tl.static_range(RUNS):
            run = (run0 + r + rep) % (KP // 32)  # varies with rep: nothing to hoist
            acc2, _ = run_dot(q_ptr, x_ptr, zcs, run * UNITS_PER_RUN, offs_n, mask_n, N, K,
                              IS_POT, BITS, True, True, USE_ASM, 0, LEFT_PAIRS=LEFT_PAIRS)
            acc = fold2(acc2, s, acc, USE_ASM)
    pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def weights_per_iter(kind: str, bits: int, cfg: dict) -> float:
    """Weights one thread decodes per iteration of the ``rep`` loop."""
    return cfg["RUNS"] * 32 * cfg["BLOCK_N"] / (32 * cfg["num_warps"])


def decode_reduce(w: Packed, x: torch.Tensor, reps: int, config: dict | None = None) -> torch.Tensor:
    """Run the decode-bound kernel: ``reps × N × RUNS·32·(programs along K)`` weights decoded;
    returns the checksums. x: fp16 ``[K]`` with K % 32 == 0."""
    cfg = dict(DEFAULT_CONFIG, **(config or {}))
    if x.shape != (w.K,) or x.dtype != torch.float16 or w.K % 32:
        raise ValueError(f"x must be fp16 [{w.K}] with K % 32 == 0, got {x.dtype} {list(x.shape)}")
    grid = (triton.cdiv(w.N, cfg["BLOCK_N"]), max(1, w.KP // 32 // cfg["RUNS"]))
    out = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=w.device)
    decode_reduce_kernel[grid](x, w.q, w.scales, w.zeros, out, w.N, w.K, w.KP, w.G, reps,
                               IS_POT=w.is_pot, BITS=w.bits, USE_ASM=w.device.type == "cuda",
                               LEFT_PAIRS=left_pairs(w.kind, w.bits),
                               RUNS=cfg["RUNS"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    return out

"""M ≥ 128 (prefill): fused decode + tensor-core GEMM, tiled, fp32 accumulation.

Compute bound once M is in the hundreds. Each program owns a ``[BLOCK_M, BLOCK_N]`` output tile
(``BLOCK_M = 128``: two consumer warpgroups of 64 rows with ``num_warps = 8``) and per K step
decodes its ``[BLOCK_N, BLOCK_K]`` weight tile once (:func:`mma_tile.tile_nk`, every packed word
read once, 128-bit shared stores), which wgmma then reads from shared memory for all BLOCK_M rows.
The group scale is folded into each weight here (one multiply by S_top for PoT): a per-step multiply of
the accumulator would cost BLOCK_M·BLOCK_N / threads multiplies against BLOCK_N·BLOCK_K / threads
decoded weights, more than it saves. Program ids are swizzled in groups of ``GROUP_M`` row tiles
so neighbouring programs share weight tiles in L2 (each W tile is decoded ``M / BLOCK_M`` times
in all, from L2 after the first).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import triton
import triton.language as tl

from .launch import dot_f32, join_tree, launch_opts, mma_tiles, scale_free, use_asm, word_loads
from .mma_tile import group_scale, tile_nk
from .packed import Packed


@triton.jit
def gemm_kernel(x_ptr, q_ptr, lut_ptr, sc_ptr, b_ptr, y_ptr,
                M, N, K, KP, stride_xm,
                IS_POT: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr, GROUP_RUNS: tl.constexpr,
                HAS_BIAS: tl.constexpr, SCALE_FREE: tl.constexpr, DOT_F32: tl.constexpr, JOIN_TREE: tl.constexpr,
                USE_ASM: tl.constexpr, WORD_LOADS: tl.constexpr, EVEN_K: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # EVEN_K (whole K tiles): x rows past M are clamped instead of predicating every copy (never stored). The
    # weight tile keeps its masks: clamped feature offsets lose their contiguity (narrower copies), and triton 3.6
    # fails to compile the per-run word loads with them
    offs_ml = tl.minimum(offs_m, M - 1) if EVEN_K else offs_m
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, KP, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + offs_ml[:, None] * stride_xm + offs_k[None, :]
        if EVEN_K:
            xt = tl.load(x_ptrs)
        else:
            xt = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
        w = tile_nk(q_ptr, lut_ptr, sc_ptr, k0, offs_n, mask_n, N, K, KP, GROUP_RUNS,
                    IS_POT, BITS, IS_BF16, SCALE_FREE, JOIN_TREE, BLOCK_K, USE_ASM, WORDS=WORD_LOADS)
        if DOT_F32:  # interpreter only (launch.dot_f32): exact upcast
            w = w.to(tl.float32)
            xt = xt.to(tl.float32)
        if SCALE_FREE:
            s = group_scale(sc_ptr, k0 // 32, offs_n, mask_n, N, GROUP_RUNS, IS_POT)
            acc += tl.dot(xt, tl.trans(w)) * s[None, :]
        else:
            acc = tl.dot(xt, tl.trans(w), acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ host side
def launch(x: torch.Tensor, w: Packed, bias: Optional[torch.Tensor], y: torch.Tensor,
           cfg: dict[str, Any]) -> torch.Tensor:
    """Tiled tensor-core regime for large M (prefill); x fp16/bf16."""
    m = x.shape[0]
    bm, bn, bk = mma_tiles("gemm", cfg)
    grid = (triton.cdiv(m, bm) * triton.cdiv(w.N, bn),)
    gemm_kernel[grid](x, w.q, w.lut, w.tile_scales, bias if bias is not None else w.scales, y,
                      m, w.N, w.K, w.KP, x.stride(0), GROUP_RUNS=w.group_runs(), IS_POT=w.is_pot, BITS=w.bits,
                      IS_BF16=x.dtype == torch.bfloat16, HAS_BIAS=bias is not None,
                      SCALE_FREE=scale_free(cfg, w, bk, "weight"), DOT_F32=dot_f32(), JOIN_TREE=join_tree(cfg),
                      USE_ASM=use_asm(x.device), WORD_LOADS=word_loads(w), EVEN_K=w.K % bk == 0,
                      BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=int(cfg.get("GROUP_M", 8)), **launch_opts(cfg))
    return y


def candidates(m: int) -> list[dict[str, Any]]:
    """The tuner's search space (``tune.py``)."""
    return [dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=s) for bm in (128, 256)
            for s in (2, 3)] + [dict(BLOCK_M=128, BLOCK_N=n, BLOCK_K=128, GROUP_M=8, num_warps=w, num_stages=st)
                                for n, w, st in ((256, 8, 2), (64, 4, 3))]

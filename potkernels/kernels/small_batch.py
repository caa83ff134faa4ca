"""M = 2 … 512: swap-AB tensor-core kernel (fused decode + ``tl.dot``), split-K or stream-K, fp32 accumulation.

Computes ``yᵀ = W · xᵀ`` instead of ``y = x · Wᵀ``: the output features fill the MMA's 64-row
side (Hopper wgmma ``m64nBMk16``, one warpgroup per 64 features) and the batch is its N side
(``BLOCK_M`` ∈ {16, 32, 64, 128}; larger M runs several programs along M), so no MMA rows are
wasted on padding a small batch to 64. The decoded ``[BLOCK_N, BLOCK_K]`` W tile is the MMA's A
operand, read from registers; x arrives as ``[BLOCK_K, BLOCK_M]`` tiles through shared memory.

Per K step a program loads each packed word of its tile once (:func:`mma_tile.tile_nk`); the thread
that loads a run's words decodes all 32 of its weights. With ``FRAG_K`` (``BLOCK_K`` a multiple of
128, the default) the tile's columns are in the MMA operand's order (:func:`mma_tile.tile_k`) and x
is loaded in that same k order, so each thread's decoded run already sits where the wgmma wants it:
no shared-memory round trip of the decoded tile (STS + LDSM, 4 B per weight), the cost is x loaded
4 bytes at a time. ``EVEN_K`` (K a multiple of ``BLOCK_K``): rows past N and M are clamped instead of
masked, so the cp.async copies need no predicates (those rows are never stored). When the K tile lies
in one group (``SCALE_FREE``), the tile holds the scale-free values ``±2^E`` / ``q − z`` and the group
scale multiplies the fp32 MMA result, one multiply per output per step instead of one per weight; it is loaded one
step ahead as the 32-bit word that holds it (:func:`mma_tile.tile_word`, read first in the next step: never waited
on). The int zero point comes in the step that uses it, copied by the pipeline with the packed words
(:func:`mma_tile.tile_nk`).
Splitting K keeps every SM streaming weights when ``N / BLOCK_N`` alone is too few programs;
partial sums go to an fp32 ``[n_split, M, N]`` buffer reduced in split order
(:func:`splitk.splitk_finish`, deterministic, ``REDUCE_CHUNK`` splits per load). With one program per SM
(M ≥ 128) a layer's tiles × splits rarely fill whole rounds of SMs; ``schedule: "stream"`` (stream-K) runs
exactly ``waves`` × SMs programs instead, each the same number of (tile, K step) units, and only the tiles
that programs share go through the partial buffer.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import triton
import triton.language as tl

from . import configs
from .launch import counters, dot_f32, frag_k, join_tree, launch_opts, mma_tiles, reduce_partials
from .launch import n_split as launch_n_split
from .launch import scale_free, stream_geometry, stream_k, use_asm, word_loads
from .mma_tile import tile_k, tile_nk, tile_word, word_scale
from .packed import Packed
from .splitk import splitk_finish


def reduce_chunk(block_m: int, block_n: int, num_warps: int) -> int:
    """Splits the split-K tail loads at once (``splitk_finish``): as many as keep ≤ 64 partials per
    thread in flight (one cache round trip per chunk; 128 at M = 16 raised the kernel to 168 registers and
    the model's main loop to shared-memory bound)."""
    per_thread = block_m * block_n // (32 * num_warps)
    return max(1, min(16, 64 // max(per_thread, 1)))


@triton.jit
def _k_range_dot(x_ptr, q_ptr, lut_ptr, sc_ptr, offs_n, offs_nl, mask_n, offs_ml, mask_m, k_lo, k_hi,
                 N, K, KP, stride_xm, IS_POT: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr,
                 GROUP_RUNS: tl.constexpr, SCALE_FREE: tl.constexpr, DOT_F32: tl.constexpr,
                 JOIN_TREE: tl.constexpr, USE_ASM: tl.constexpr, FRAG_K: tl.constexpr, EVEN_K: tl.constexpr,
                 WORD_LOADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``yᵀ[offs_n, offs_m]`` summed over ``k_lo ≤ k < k_hi`` (whole K tiles): fp32 ``[BLOCK_N, BLOCK_M]``."""
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    # the scale of step k0 is loaded one step ahead (a 2-byte load per thread cannot ride cp.async), as the
    # 32-bit word that holds it (mma_tile.tile_word: PoT fp16 S_top, int [scale | zero] words)
    s_cur = tile_word(sc_ptr, k_lo // 32, offs_n, mask_n & SCALE_FREE, N, GROUP_RUNS, IS_POT, WORD_LOADS)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        s_tile = word_scale(s_cur, offs_n, IS_POT, WORD_LOADS)  # read first, before the register is loaded again
        ahead = mask_n & SCALE_FREE & (k0 + BLOCK_K < k_hi)
        s_next = tile_word(sc_ptr, (k0 + BLOCK_K) // 32, offs_n, ahead, N, GROUP_RUNS, IS_POT, WORD_LOADS)
        offs_k = tile_k(k0, BLOCK_K, FRAG_K)
        x_ptrs = x_ptr + offs_ml[None, :] * stride_xm + offs_k[:, None]  # [BK, BM], K contiguous
        if EVEN_K:
            xt = tl.load(x_ptrs)
        else:
            xt = tl.load(x_ptrs, mask=mask_m[None, :] & (offs_k < K)[:, None], other=0.0)
        w = tile_nk(q_ptr, lut_ptr, sc_ptr, k0, offs_nl, mask_n, N, K, KP, GROUP_RUNS, IS_POT, BITS, IS_BF16,
                    SCALE_FREE, JOIN_TREE, BLOCK_K, USE_ASM, FRAG_K, EVEN_K, WORD_LOADS)
        if DOT_F32:  # interpreter only (launch.dot_f32): exact upcast
            w = w.to(tl.float32)
            xt = xt.to(tl.float32)
        if SCALE_FREE:
            acc += tl.dot(w, xt) * s_tile[:, None]
        else:
            acc = tl.dot(w, xt, acc)
        s_cur = s_next
    return acc


@triton.jit
def _tile_rows(pid_n, pid_m, M, N, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Output tile (pid_n, pid_m): feature and x-row offsets, their masks, and the offsets loads use (``EVEN_K``:
    every K tile is whole, so rows past N and M are clamped instead of predicating every copy; never stored)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if EVEN_K:
        offs_nl = tl.minimum(offs_n, N - 1)
        offs_ml = tl.minimum(offs_m, M - 1)
    else:
        offs_nl = offs_n
        offs_ml = offs_m
    return offs_m, offs_n, offs_m < M, offs_n < N, offs_ml, offs_nl


@triton.jit
def _store_y(acc, b_ptr, y_ptr, offs_y, offs_n, mask_n, mask, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + offs_y, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def small_batch_kernel(x_ptr, q_ptr, lut_ptr, sc_ptr, b_ptr, y_ptr, part_ptr, cnt_ptr,
                       M, N, K, KP, stride_xm, k_per_split, n_split, k_steps, tiles_n, units, units_per_program,
                       IS_POT: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr, GROUP_RUNS: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, FUSED_REDUCE: tl.constexpr, STREAM: tl.constexpr,
                       SCALE_FREE: tl.constexpr, DOT_F32: tl.constexpr, JOIN_TREE: tl.constexpr, USE_ASM: tl.constexpr,
                       FRAG_K: tl.constexpr, EVEN_K: tl.constexpr, WORD_LOADS: tl.constexpr,
                       REDUCE_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Split-K: program (n, k, m) computes output tile (n, m) over the K range ``[k·k_per_split, …)``.
    ``STREAM`` (stream-K): program p takes the work units ``[p·units_per_program, …)`` of all
    ``tiles × k_steps`` units (tile-major, K steps inside; tile t = m·tiles_n + n), walking tile by tile; a
    tile it covers whole is stored at once, its share of a tile it shares is stored as partial number
    ``p − (the tile's first program)`` and the last of the tile's programs to arrive adds them in that order
    (deterministic). Every program has the same number of K steps, so no SM idles through a last, partly
    filled round of programs."""
    if STREAM:
        pid = tl.program_id(0)
        u = pid * units_per_program
        u_end = tl.minimum(u + units_per_program, units)
        for _ in range(0, (u_end - 1) // k_steps - u // k_steps + 1):  # the tiles this program touches
            t = u // k_steps
            seg_end = tl.minimum(u_end, (t + 1) * k_steps)
            first = (t * k_steps) // units_per_program  # the tile's first and last programs
            n_parts = ((t + 1) * k_steps - 1) // units_per_program - first + 1
            offs_m, offs_n, mask_m, mask_n, offs_ml, offs_nl = _tile_rows(t % tiles_n, t // tiles_n, M, N, EVEN_K,
                                                                          BLOCK_M, BLOCK_N)
            acc = _k_range_dot(x_ptr, q_ptr, lut_ptr, sc_ptr, offs_n, offs_nl, mask_n, offs_ml, mask_m,
                               (u - t * k_steps) * BLOCK_K, tl.minimum((seg_end - t * k_steps) * BLOCK_K, KP),
                               N, K, KP, stride_xm, IS_POT, BITS, IS_BF16, GROUP_RUNS, SCALE_FREE, DOT_F32,
                               JOIN_TREE, USE_ASM, FRAG_K, EVEN_K, WORD_LOADS, BLOCK_M, BLOCK_N, BLOCK_K)
            mask = mask_n[:, None] & mask_m[None, :]
            offs_y = offs_m[None, :] * N + offs_n[:, None]
            if n_parts == 1:
                _store_y(acc, b_ptr, y_ptr, offs_y, offs_n, mask_n, mask, HAS_BIAS)
            else:
                tl.store(part_ptr + (pid - first) * M * N + offs_y, acc, mask=mask)
                splitk_finish(part_ptr, cnt_ptr, b_ptr, y_ptr, t, n_parts, M * N, offs_y, mask, offs_n[:, None],
                              HAS_BIAS, REDUCE_CHUNK, True)
            u = seg_end
    else:
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        pid_m = tl.program_id(2)
        offs_m, offs_n, mask_m, mask_n, offs_ml, offs_nl = _tile_rows(pid_n, pid_m, M, N, EVEN_K, BLOCK_M, BLOCK_N)
        k_lo = pid_k * k_per_split
        acc = _k_range_dot(x_ptr, q_ptr, lut_ptr, sc_ptr, offs_n, offs_nl, mask_n, offs_ml, mask_m,
                           k_lo, tl.minimum(k_lo + k_per_split, KP), N, K, KP, stride_xm, IS_POT, BITS, IS_BF16,
                           GROUP_RUNS, SCALE_FREE, DOT_F32, JOIN_TREE, USE_ASM, FRAG_K, EVEN_K, WORD_LOADS,
                           BLOCK_M, BLOCK_N, BLOCK_K)
        mask = mask_n[:, None] & mask_m[None, :]
        offs_y = offs_m[None, :] * N + offs_n[:, None]
        if SPLIT:
            tl.store(part_ptr + pid_k * M * N + offs_y, acc, mask=mask)
            if FUSED_REDUCE:
                splitk_finish(part_ptr, cnt_ptr, b_ptr, y_ptr, pid_m * tl.num_programs(0) + pid_n, n_split, M * N,
                              offs_y, mask, offs_n[:, None], HAS_BIAS, REDUCE_CHUNK, True)
        else:
            _store_y(acc, b_ptr, y_ptr, offs_y, offs_n, mask_n, mask, HAS_BIAS)


# ------------------------------------------------------------------ host side
def launch(x: torch.Tensor, w: Packed, bias: Optional[torch.Tensor], y: torch.Tensor,
           cfg: dict[str, Any]) -> torch.Tensor:
    """Swap-AB tensor-core regime (M = 2 … 512): ``yᵀ = W xᵀ``, split-K or stream-K (``schedule``);
    x fp16/bf16."""
    m = x.shape[0]
    bm, bn, bk = mma_tiles("small_batch", cfg)
    stream = stream_k(cfg)
    opts = launch_opts(cfg)
    tiles_n = triton.cdiv(w.N, bn)
    tiles = tiles_n * triton.cdiv(m, bm)
    k_steps = triton.cdiv(w.KP, bk)
    units = units_per_program = 0
    if stream:  # one program per slot of `waves` per SM, each the same number of K steps
        units = tiles * k_steps
        programs, units_per_program, n_split = stream_geometry(tiles, k_steps, cfg, configs.sm_count(w.device.index))
        grid = (programs, 1, 1)
        k_per_split = w.KP
    else:
        n_split = launch_n_split(tiles, k_steps, cfg, w.device)
        k_per_split = triton.cdiv(k_steps, n_split) * bk
        n_split = triton.cdiv(w.KP, k_per_split)
        grid = (tiles_n, n_split, triton.cdiv(m, bm))
    split = n_split > 1
    part = torch.empty((n_split, m, w.N), dtype=torch.float32, device=w.device) if split else y
    fused = split and cfg.get("reduce", "fused") == "fused"  # stream-K: always (launch.stream_k checks)
    cnt = counters(w.device, tiles) if fused else part
    small_batch_kernel[grid](x, w.q, w.lut, w.tile_scales, bias if bias is not None else w.scales, y, part, cnt,
                             m, w.N, w.K, w.KP, x.stride(0), k_per_split, n_split, k_steps, tiles_n, units,
                             units_per_program, GROUP_RUNS=w.group_runs(),
                             IS_POT=w.is_pot, BITS=w.bits, IS_BF16=x.dtype == torch.bfloat16,
                             HAS_BIAS=bias is not None, SPLIT=split, FUSED_REDUCE=fused, STREAM=stream,
                             SCALE_FREE=scale_free(cfg, w, bk, "acc"), DOT_F32=dot_f32(),
                             JOIN_TREE=join_tree(cfg), USE_ASM=use_asm(x.device), FRAG_K=frag_k(cfg, bk),
                             EVEN_K=w.K % bk == 0, WORD_LOADS=word_loads(w),
                             REDUCE_CHUNK=reduce_chunk(bm, bn, opts["num_warps"]), BLOCK_M=bm, BLOCK_N=bn,
                             BLOCK_K=bk, **opts)
    if split and not fused:
        reduce_partials(part, bias, y, n_split, w.N)
    return y


def candidates(m: int) -> list[dict[str, Any]]:
    """The tuner's search space (``tune.py``); BLOCK_M is the MMA's N side (the batch)."""
    bm = max(16, min(128, configs.m_bucket(m)))
    grid = [dict(BLOCK_M=bm, BLOCK_N=n, BLOCK_K=k, num_warps=4, num_stages=3, waves=v) for n in (64, 128)
            for k in (64, 128, 256) for v in (1, 2, 3, 4, 6)]
    # three or four one-warpgroup programs per SM only fit with at most 168 / 128 registers a thread
    grid += [dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=128, num_warps=4, num_stages=3, waves=v, maxnreg=r)
             for v, r in ((3, 168), (4, 128))]
    wide = dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=128)  # two warpgroups (8 warps); stream-K with one or two
    return grid + [dict(wide, num_warps=8, num_stages=s, waves=v) for s in (2, 3) for v in (1, 2, 3)] + \
        [dict(wide, num_warps=8, num_stages=3, waves=v, maxnreg=128) for v in (1, 2)] + \
        [dict(wide, num_warps=w, num_stages=3, waves=v, schedule="stream") for w in (4, 8) for v in (1, 2)]

"""M = 1 (and a few fp16 rows) fused decode + matvec on the v2 layout: fp16x2 short runs, fp32 across runs,
split-K, a cp.async pipeline.

Each program owns ``BLOCK_N`` output columns, up to ``BLOCK_M`` x rows and a K-chunk of whole *runs* of
32 k; each loop step takes ``BLOCK_R`` runs side by side (the warps split K inside the program) and
``tl.range(num_stages=...)`` streams their packed words (128-bit per thread, one ``[BLOCK_R, BLOCK_N]``
tile per word index), their group scales and x through shared memory ahead of use. Per run and column
it decodes two codes per fp16x2 register with the pair decoders of ``decode.py`` (one rotate + one LOP3
per pair; the pairs of ``GEMV_LEFT_PAIRS`` by one left shift with their lanes swapped, off the half-rate
integer pipe) and multiplies them with the matching pair of each x row (read as int32 fp16x2 pairs, shared
by all of a thread's columns, lane-swapped once per run where the pair is):

* **fp16 activations**: ``acc2 = fma.rn.f16x2(x2, v2, acc2)`` over the run's 16 pairs (16 terms per
  lane), then ``acc += (lo + hi) · s`` in fp32, ``s`` = the group's stored S_top (PoT) or s·2^bits
  (int). PoT lanes are ±2^(E − qmax) — exact; int lanes ``(q − z)·2^−bits`` (one HFMA2 from the
  Marlin magic ``1024 + q·2^o``) — exact. |lane| ≤ 1, so a run's lane sum is ≤ Σ|x| over 16
  elements: no overflow while max|x| < 4096 (FORMAT.md §6 states the error bound; larger
  activations: pass them as bf16 / fp32).
* **bf16 / fp32 activations**: the same lanes converted to fp32 and FFMA'd (no fp16 rounding).

``USE_ASM`` selects inline PTX (``shf.r.wrap`` / ``lop3`` in ``decode.py``'s pair decoders,
``fma.rn.f16x2`` here; compiled GPU runs) or the pure-Triton twin (same bit operations; fp16 FMA emulated exactly in fp64 — bit-identical,
see FORMAT.md §6), which the interpreter tests. Split-K partials go to an fp32 ``[n_split, M, N]``
buffer reduced in a fixed order (deterministic) by the last program of each output tile (``splitk.py``).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import triton
import triton.language as tl

from .decode import (group_of_run, hfma2, hi_half, int3_spare_pair, int_pair, int_zero_consts, lo_half, pot3_spare_pair,
                     pot_pair, rotr)
from .launch import counters, reduce_partials, use_asm
from .launch import n_split as launch_n_split
from .packed import Packed
from .splitk import splitk_finish


# Split-K partials the last program of a column block loads at once (one fp32 per thread and split at
# BLOCK_N = 128, 4 warps): a split count up to this costs the reduction one cache round trip.
GEMV_REDUCE_CHUNK: tl.constexpr = tl.constexpr(16)


# ------------------------------------------------------------------ fp16x2 arithmetic: PTX and its twin
@triton.jit
def fold2(acc2, s, acc, USE_ASM: tl.constexpr):
    """``acc + (lo(acc2) + hi(acc2)) · s`` in fp32 (one fma)."""
    if USE_ASM:
        r = tl.inline_asm_elementwise(
            "{.reg .f16 l, h; .reg .f32 a, b; mov.b32 {l, h}, $1; cvt.f32.f16 a, l; cvt.f32.f16 b, h; "
            "add.f32 a, a, b; fma.rn.f32 $0, a, $2, $3;}",
            "=f,r,f,f", [acc2, s, acc], dtype=tl.float32, is_pure=True, pack=1)
    else:
        r = tl.fma(lo_half(acc2).to(tl.float32) + hi_half(acc2).to(tl.float32), s, acc)
    return r


# ------------------------------------------------------------------ per-word pair lists
@triton.jit
def pot_word_pairs(w, BITS: tl.constexpr, USE_ASM: tl.constexpr, LEFT: tl.constexpr = 0):
    """Pairs of one PoT word, as fp16x2 ±2^(E−qmax). 4-bit: 4 pairs; 2-bit: 8; 3-bit: 5 (+ spare). ``LEFT``: bit
    mask of the pairs that come lane-swapped, decoded by a left shift (``decode.pot_pair``)."""
    if BITS == 4:
        r = (pot_pair(w, 4, 0, USE_ASM, LEFT % 2 == 1), pot_pair(w, 4, 1, USE_ASM, (LEFT >> 1) % 2 == 1),
             pot_pair(w, 4, 2, USE_ASM, (LEFT >> 2) % 2 == 1), pot_pair(w, 4, 3, USE_ASM, (LEFT >> 3) % 2 == 1))
    elif BITS == 2:
        r = (pot_pair(w, 2, 0, USE_ASM, LEFT % 2 == 1), pot_pair(w, 2, 1, USE_ASM, (LEFT >> 1) % 2 == 1),
             pot_pair(w, 2, 2, USE_ASM, (LEFT >> 2) % 2 == 1), pot_pair(w, 2, 3, USE_ASM, (LEFT >> 3) % 2 == 1),
             pot_pair(w, 2, 4, USE_ASM, (LEFT >> 4) % 2 == 1), pot_pair(w, 2, 5, USE_ASM, (LEFT >> 5) % 2 == 1),
             pot_pair(w, 2, 6, USE_ASM, (LEFT >> 6) % 2 == 1), pot_pair(w, 2, 7, USE_ASM, (LEFT >> 7) % 2 == 1))
    else:
        r = (pot_pair(w, 3, 0, USE_ASM, LEFT % 2 == 1), pot_pair(w, 3, 1, USE_ASM, (LEFT >> 1) % 2 == 1),
             pot_pair(w, 3, 2, USE_ASM, (LEFT >> 2) % 2 == 1), pot_pair(w, 3, 3, USE_ASM, (LEFT >> 3) % 2 == 1),
             pot_pair(w, 3, 4, USE_ASM, (LEFT >> 4) % 2 == 1))
    return r


@triton.jit
def _x_pair(x_ptr, k, K):
    """x[k], x[k+1] (k even, masked past K) as uint32 fp16x2 bits."""
    lo = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float16)
    hi = tl.load(x_ptr + k + 1, mask=k + 1 < K, other=0.0).to(tl.float16)
    lo_b = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi_b = hi.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return (lo_b | (hi_b << 16)).to(tl.uint32, bitcast=True)


@triton.jit
def _x_pair32(x_ptr, k, K):
    """x[k], x[k+1] as fp32 scalars (masked past K)."""
    return (tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32),
            tl.load(x_ptr + k + 1, mask=k + 1 < K, other=0.0).to(tl.float32))


@triton.jit
def _lo32(q):
    return (q & 0xFFFFFFFF).to(tl.uint32)


@triton.jit
def _hi32(q):
    return ((q >> 32) & 0xFFFFFFFF).to(tl.uint32)


@triton.jit
def x_run_pairs(x_ptr, k0, K, EVEN_K: tl.constexpr, FULL: tl.constexpr = False, ONE_LOAD: tl.constexpr = False):
    """The 16 fp16x2 pairs x[k0 + 2p], x[k0 + 2p + 1] of a run (p = 0 … 15), as uint32 (``k0`` a scalar
    or a ``[R, 1]`` tensor of run starts), shared by every column of the thread. When K % 32 == 0: eight
    64-bit loads, or with ``ONE_LOAD`` (``k0`` ``[R, 1]``) one ``[R, 8]`` int64 load split in registers — one
    cp.async copy group per loop step instead of eight (PoT3 GEMV 2.27 → 2.23 instructions per weight). Masked
    past ``K``: a caller zeroes a whole run by passing ``K = 0`` for it; ``FULL`` (every run exists) loads
    without a mask."""
    if EVEN_K and ONE_LOAD:  # k0 [R, 1]: the runs' 64 bytes of x as one [R, 8] copy, split in registers
        x_ptrs = x_ptr.to(tl.pointer_type(tl.int64)) + k0 // 4 + tl.arange(0, 8)[None, :]
        if FULL:
            xq = tl.load(x_ptrs)
        else:
            xq = tl.load(x_ptrs, mask=(k0 < K) & (tl.arange(0, 8) < 8)[None, :], other=0)
        xq = tl.reshape(xq, [xq.shape[0], 2, 2, 2])  # [r, a, b, c]: int64 number 4a + 2b + c
        e, o = tl.split(xq)  # c = 0, 1
        e0, e1 = tl.split(e)
        o0, o1 = tl.split(o)
        q0, q4 = tl.split(e0)
        q2, q6 = tl.split(e1)
        q1, q5 = tl.split(o0)
        q3, q7 = tl.split(o1)
        q0, q1, q2, q3 = q0[:, None], q1[:, None], q2[:, None], q3[:, None]
        q4, q5, q6, q7 = q4[:, None], q5[:, None], q6[:, None], q7[:, None]
    elif EVEN_K:
        xl = x_ptr.to(tl.pointer_type(tl.int64)) + k0 // 4
        live = (k0 < K) | FULL
        q0, q1 = tl.load(xl, mask=live, other=0), tl.load(xl + 1, mask=live, other=0)
        q2, q3 = tl.load(xl + 2, mask=live, other=0), tl.load(xl + 3, mask=live, other=0)
        q4, q5 = tl.load(xl + 4, mask=live, other=0), tl.load(xl + 5, mask=live, other=0)
        q6, q7 = tl.load(xl + 6, mask=live, other=0), tl.load(xl + 7, mask=live, other=0)
    if EVEN_K:
        r = (_lo32(q0), _hi32(q0), _lo32(q1), _hi32(q1), _lo32(q2), _hi32(q2), _lo32(q3), _hi32(q3),
             _lo32(q4), _hi32(q4), _lo32(q5), _hi32(q5), _lo32(q6), _hi32(q6), _lo32(q7), _hi32(q7))
    else:
        r = (_x_pair(x_ptr, k0, K), _x_pair(x_ptr, k0 + 2, K), _x_pair(x_ptr, k0 + 4, K), _x_pair(x_ptr, k0 + 6, K),
             _x_pair(x_ptr, k0 + 8, K), _x_pair(x_ptr, k0 + 10, K), _x_pair(x_ptr, k0 + 12, K),
             _x_pair(x_ptr, k0 + 14, K), _x_pair(x_ptr, k0 + 16, K), _x_pair(x_ptr, k0 + 18, K),
             _x_pair(x_ptr, k0 + 20, K), _x_pair(x_ptr, k0 + 22, K), _x_pair(x_ptr, k0 + 24, K),
             _x_pair(x_ptr, k0 + 26, K), _x_pair(x_ptr, k0 + 28, K), _x_pair(x_ptr, k0 + 30, K))
    return r


@triton.jit
def _use_pair(acc2, acc32, v2, xr, P: tl.constexpr, x_ptr, k0, K, X_F16: tl.constexpr, USE_ASM: tl.constexpr,
              SWAPPED: tl.constexpr = False):
    """Accumulate decoded pair ``P`` of the run (codes k0 + 2P, k0 + 2P + 1; ``SWAPPED``: in the other lane
    order): HFMA2 for fp16 x (``xr`` from :func:`x_run_pairs`, its lanes swapped to match — once per run,
    shared by the thread's columns), two FFMA for bf16/fp32 x."""
    if X_F16:  # (+ zeros: broadcast x rows against the decoded pair before the inline PTX)
        if SWAPPED:
            x2 = rotr(xr[P], 16)  # the two lanes exchanged
        else:
            x2 = xr[P]
        acc2 = hfma2(x2 + tl.zeros_like(acc2), v2 + tl.zeros_like(acc2), acc2, USE_ASM)
    else:
        xl, xh = _x_pair32(x_ptr, k0 + 2 * P, K)
        if SWAPPED:
            acc32 = acc32 + xh * lo_half(v2).to(tl.float32) + xl * hi_half(v2).to(tl.float32)
        else:
            acc32 = acc32 + xl * lo_half(v2).to(tl.float32) + xh * hi_half(v2).to(tl.float32)
    return acc2, acc32


@triton.jit
def _load_words(q_ptr, row, N, offs_n, m):
    return tl.load(q_ptr + row * N + offs_n, mask=m, other=0, eviction_policy="evict_first").to(tl.uint32, bitcast=True)


@triton.jit
def run_dot(q_ptr, x_ptr, zcs, unit0, offs_n, mask_n, N, K,
            IS_POT: tl.constexpr, BITS: tl.constexpr, X_F16: tl.constexpr, EVEN_K: tl.constexpr,
            USE_ASM: tl.constexpr, ROWS: tl.constexpr, FULL: tl.constexpr = False, ONE_X_LOAD: tl.constexpr = False,
            LEFT_PAIRS: tl.constexpr = 0):
    """One run of 32 k starting at unit ``unit0`` → (fp16x2 accumulator, fp32 accumulator), scale-free
    (the caller multiplies by the group's scale). Shapes broadcast: ``unit0`` a scalar and ``offs_n``,
    ``mask_n`` ``[BN]`` (one run, ``ROWS`` = 0), or ``unit0`` ``[R, 1]``, ``offs_n`` ``[1, BN]``, ``mask_n``
    ``[R, BN]`` (R runs side by side) and ``x_ptr`` ``[ROWS, 1, 1]`` row pointers (each decoded pair is
    used by ``ROWS`` x rows: decode once, one HFMA2 per row). Accumulators: ``mask_n``'s shape, with a
    leading ``ROWS`` axis when ``ROWS`` > 0. ``K`` masks x (0 for a dead run or row) unless ``FULL`` (no dead
    run or row: unmasked x loads); ``ONE_X_LOAD`` (``unit0`` ``[R, 1]``, no rows axis): x of the R runs as one copy
    (:func:`x_run_pairs`). ``LEFT_PAIRS`` (PoT): bit mask of the pairs of each word decoded by a left shift with
    their lanes swapped, on the FMA pipe instead of the half-rate integer pipe (``decode.lanes_or``; a subset of
    ``decode.POT{BITS}_LEFT``), which meet x swapped to match (one lane swap per pair and run, shared by the
    thread's columns): :func:`left_pairs`. ``zcs``: :func:`int_zero_consts`."""
    if ROWS == 0:
        acc2 = tl.zeros(mask_n.shape, dtype=tl.uint32)
        acc32 = tl.zeros(mask_n.shape, dtype=tl.float32)
    else:
        acc2 = tl.zeros([ROWS, mask_n.shape[0], mask_n.shape[1]], dtype=tl.uint32)
        acc32 = tl.zeros([ROWS, mask_n.shape[0], mask_n.shape[1]], dtype=tl.float32)
    k0 = unit0 * (32 if BITS == 3 else 32 // BITS)
    if X_F16:
        xr = x_run_pairs(x_ptr, k0, K, EVEN_K, FULL, ONE_X_LOAD)
    else:
        xr = (k0,)  # unused
    LEFT: tl.constexpr = LEFT_PAIRS * IS_POT
    if BITS == 3:
        w0 = _load_words(q_ptr, unit0 * 3, N, offs_n, mask_n)
        w1 = _load_words(q_ptr, unit0 * 3 + 1, N, offs_n, mask_n)
        w2 = _load_words(q_ptr, unit0 * 3 + 2, N, offs_n, mask_n)
        words = (w0, w1, w2)
        for wi in tl.static_range(3):
            w = words[wi]
            if IS_POT:
                pairs = pot_word_pairs(w, 3, USE_ASM, LEFT)
            for j in tl.static_range(5):
                if IS_POT:
                    v = pairs[j]
                else:
                    v = int_pair(w, 3, j, zcs, 3, USE_ASM)
                acc2, acc32 = _use_pair(acc2, acc32, v, xr, 5 * wi + j, x_ptr, k0, K, X_F16, USE_ASM,
                                        (LEFT >> j) % 2 == 1)
        if IS_POT:
            v = pot3_spare_pair(w0, w1, w2)
        else:
            v = int3_spare_pair(w0, w1, w2, zcs, 3, USE_ASM)
        acc2, acc32 = _use_pair(acc2, acc32, v, xr, 15, x_ptr, k0, K, X_F16, USE_ASM)
    else:
        PAIRS: tl.constexpr = 16 // BITS
        for u in tl.static_range(BITS):  # BITS words per run of 32 k
            w = _load_words(q_ptr, unit0 + u, N, offs_n, mask_n)
            if IS_POT:
                pairs = pot_word_pairs(w, BITS, USE_ASM, LEFT)
            for j in tl.static_range(PAIRS):
                if IS_POT:
                    v = pairs[j]
                else:
                    v = int_pair(w, BITS, j, zcs, BITS, USE_ASM)
                acc2, acc32 = _use_pair(acc2, acc32, v, xr, u * PAIRS + j, x_ptr, k0, K, X_F16, USE_ASM,
                                        (LEFT >> j) % 2 == 1)
    return acc2, acc32


@triton.jit
def gemv_kernel(x_ptr, q_ptr, sc_ptr, z_ptr, b_ptr, y_ptr, part_ptr, cnt_ptr,
                M, N, K, KP, stride_xm, runs_per_split, n_split,
                IS_POT: tl.constexpr, BITS: tl.constexpr, X_F16: tl.constexpr,
                HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, FUSED_REDUCE: tl.constexpr, EVEN_K: tl.constexpr,
                FULL_TILES: tl.constexpr, USE_ASM: tl.constexpr, GROUP_RUNS: tl.constexpr, LEFT_PAIRS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, NUM_STAGES: tl.constexpr):
    """``y = x Wᵀ`` for ``M`` ≤ a few rows of x on CUDA cores. Program (n, k, m) owns columns
    ``n·BLOCK_N …``, x rows ``m·BLOCK_M …`` and the runs ``[k·runs_per_split, …)``; each loop step takes
    ``BLOCK_R`` consecutive runs side by side (a ``[BLOCK_R, BLOCK_N]`` tile of words per word index: the
    warps split K inside the program), decodes them once and multiplies them with all ``BLOCK_M`` rows,
    and ``tl.range(num_stages=NUM_STAGES)`` streams words, scales and x through a cp.async pipeline, so no
    load is waited on in the steady state. Each run's group scale is loaded with it (``GROUP_RUNS``:
    runs per group, a compile-time constant — the group index is a shift, no run-time division;
    0 = one group per row). The ``BLOCK_R`` runs are summed once at the end (shared memory). ``FULL_TILES``
    (every step's runs and columns exist: N % BLOCK_N == 0, runs % BLOCK_R == 0, K % 32 == 0): the streamed
    loads go unpredicated (by the speed model, M = 1 PoT3 3.31× → 3.37×, PoT2 3.65× → 3.77×)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    # one row: x a scalar pointer and 2-D [BLOCK_R, BLOCK_N] accumulators (the M = 1 loop keeps its layout:
    # each warp reads only its own run's x); more rows: [BLOCK_M, 1, 1] row pointers, 3-D accumulators
    ROWS: tl.constexpr = 0 if BLOCK_M == 1 else BLOCK_M
    X_FULL: tl.constexpr = FULL_TILES and BLOCK_M == 1  # more rows: x rows past M stay masked
    x_rows = x_ptr + pid_m * stride_xm if ROWS == 0 else x_ptr + offs_m[:, None, None] * stride_xm
    rows = tl.arange(0, BLOCK_R)[:, None]
    UNITS_PER_RUN: tl.constexpr = 1 if BITS == 3 else BITS
    r_lo = pid_k * runs_per_split
    r_hi = tl.minimum(r_lo + runs_per_split, KP // 32)
    acc = tl.zeros([BLOCK_R, BLOCK_N] if ROWS == 0 else [BLOCK_M, BLOCK_R, BLOCK_N], dtype=tl.float32)
    for r0 in tl.range(r_lo, r_hi, BLOCK_R, num_stages=NUM_STAGES):
        run = r0 + rows  # [BLOCK_R, 1]
        live = run < r_hi
        m2 = (live & mask_n[None, :]) | FULL_TILES  # constant-true: no predicates on the copies
        grp = group_of_run(run, GROUP_RUNS)
        s = tl.load(sc_ptr + grp * N + offs_n[None, :], mask=m2, other=0.0).to(tl.float32)
        if IS_POT:  # lanes are ±2^(E − qmax): the stored S_top is the multiplier as it is
            zcs = (s,)  # unused
        else:
            s = s * (2.0 ** BITS)  # lanes are (q − z)·2^−bits
            z = tl.load(z_ptr + grp * N + offs_n[None, :], mask=m2, other=0).to(tl.int32)
            zcs = int_zero_consts(z, BITS, BITS, True, USE_ASM)
        if ROWS == 0:
            k_live = tl.where(live, K, 0)  # x of a dead run reads as 0
        else:
            k_live = tl.where(mask_m[:, None, None] & live[None, :, :], K, 0)  # ... and of a dead row
            s = s[None, :, :] + tl.zeros_like(acc)
        acc2, acc32 = run_dot(q_ptr, x_rows, zcs, run * UNITS_PER_RUN, offs_n[None, :], m2, N, k_live,
                              IS_POT, BITS, X_F16, EVEN_K, USE_ASM, ROWS, X_FULL, ROWS == 0, LEFT_PAIRS)
        if X_F16:
            acc = fold2(acc2, s, acc, USE_ASM)
        else:
            acc = tl.fma(acc32, s, acc)
    if ROWS == 0:
        out = tl.sum(acc, axis=0)[None, :]  # [1, BLOCK_N]
    else:
        out = tl.sum(acc, axis=1)  # [BLOCK_M, BLOCK_N]
    mask = mask_m[:, None] & mask_n[None, :]
    offs_y = offs_m[:, None] * N + offs_n[None, :]
    if SPLIT:
        tl.store(part_ptr + pid_k * M * N + offs_y, out, mask=mask)
        if FUSED_REDUCE:
            splitk_finish(part_ptr, cnt_ptr, b_ptr, y_ptr, pid_m * tl.num_programs(0) + pid_n, n_split, M * N,
                          offs_y, mask, offs_n[None, :], HAS_BIAS, GEMV_REDUCE_CHUNK)
    else:
        if HAS_BIAS:
            out += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_y, out.to(y_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ host side
# Pairs of each PoT word the GEMV decodes lane-swapped by a left shift (bit J = pair J; subsets of
# decode.POT{b}_LEFT). Each moves one integer-pipe instruction per run and column (half rate) to the FMA pipe and
# costs one x lane swap per run, shared by a thread's four columns; so many as keep the loop from being bound by
# the integer pipe, chosen with bench/speed_model.py on the static SASS.
GEMV_LEFT_PAIRS = {2: 0b11000000, 3: 0b10000, 4: 0}


def left_pairs(kind: str, bits: int) -> int:
    """``gemv_kernel``'s ``LEFT_PAIRS`` for a code (0 for int and 8-bit)."""
    return GEMV_LEFT_PAIRS.get(bits, 0) if kind == "pot" else 0


GEMV_KEYS = {"rows_per_program", "BLOCK_N", "BLOCK_R", "num_warps", "num_stages", "waves", "split", "reduce"}


def gemv_tiles(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_R, most x rows per program) of a gemv config, checked before any launch."""
    unknown = set(cfg) - GEMV_KEYS
    if unknown:
        raise ValueError(f"unknown gemv config keys {sorted(unknown)} (allowed: {sorted(GEMV_KEYS)})")
    bn, br, bm = int(cfg["BLOCK_N"]), int(cfg.get("BLOCK_R", 1)), int(cfg.get("rows_per_program", 8))
    for name, v, lo in (("BLOCK_N", bn, 16), ("BLOCK_R", br, 1), ("rows_per_program", bm, 1)):
        if v < lo or v & (v - 1):
            raise ValueError(f"gemv {name} must be a power of two >= {lo}, got {v}")
    return bn, br, bm


def launch(x: torch.Tensor, w: Packed, bias: Optional[torch.Tensor], y: torch.Tensor,
           cfg: dict[str, Any]) -> torch.Tensor:
    """``y = x Wᵀ (+ bias)`` on CUDA cores for a few rows (M = 1 regime, and small M where the table
    says so): each program decodes its weights once for up to ``BLOCK_M`` rows; x any of fp16/bf16/fp32.

    fp16 x accumulates in fp16x2 runs of 32 k (exact products, FORMAT.md §6 bound; needs
    max|x| < 4096), bf16/fp32 x in fp32.
    """
    m = x.shape[0]
    bn, br, max_bm = gemv_tiles(cfg)
    # fp16 x shares one decode across rows; bf16/fp32 x keeps a row per program (its fp32 lanes per row
    # would spill), so each of those rows streams W once
    bm = min(triton.next_power_of_2(m), max_bm) if x.dtype == torch.float16 else 1
    n_runs = w.KP // 32
    tiles = triton.cdiv(w.N, bn)
    row_blocks = triton.cdiv(m, bm)
    n_split = launch_n_split(tiles * row_blocks, triton.cdiv(n_runs, br), cfg, w.device)
    runs_per_split = triton.cdiv(triton.cdiv(n_runs, br), n_split) * br  # whole loop steps per split
    n_split = triton.cdiv(n_runs, runs_per_split)
    split = n_split > 1
    part = torch.empty((n_split, m, w.N), dtype=torch.float32, device=w.device) if split else y
    fused = split and cfg.get("reduce", "fused") == "fused"
    cnt = counters(w.device, tiles * row_blocks) if fused else part
    gemv_kernel[(tiles, n_split, row_blocks)](
        x, w.q, w.scales, w.zeros, bias if bias is not None else w.scales, y, part, cnt, m, w.N, w.K, w.KP,
        x.stride(0), runs_per_split, n_split, IS_POT=w.is_pot, BITS=w.bits, X_F16=x.dtype == torch.float16,
        HAS_BIAS=bias is not None, SPLIT=split, FUSED_REDUCE=fused, EVEN_K=w.K % 32 == 0,
        FULL_TILES=w.K % 32 == 0 and w.N % bn == 0 and n_runs % br == 0,
        USE_ASM=use_asm(w.device), GROUP_RUNS=w.group_runs(), LEFT_PAIRS=left_pairs(w.kind, w.bits), BLOCK_M=bm, BLOCK_N=bn, BLOCK_R=br,
        NUM_STAGES=int(cfg.get("num_stages", 3)), num_warps=int(cfg.get("num_warps", 4)))
    if split and not fused:
        reduce_partials(part, bias, y, n_split, w.N)
    return y


def candidates(m: int) -> list[dict[str, Any]]:
    """The tuner's search space (``tune.py``): a few pipeline shapes around the model's choice, and narrow
    column blocks with long K steps that need no split-K (no partials, no tail round trips)."""
    return [dict(BLOCK_N=n, BLOCK_R=r, num_warps=w, num_stages=2, waves=v)
            for n in (32, 64, 128) for r in (8, 16) for w in (2, 4) for v in (4, 6, 8, 12)] + \
        [dict(BLOCK_N=16, BLOCK_R=r, num_warps=4, num_stages=s, waves=1) for r in (32, 64) for s in (2, 3)] + \
        [dict(BLOCK_N=16, BLOCK_R=128, num_warps=8, num_stages=s, waves=1) for s in (2, 3)]

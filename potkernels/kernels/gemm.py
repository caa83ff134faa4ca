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
import triton
import triton.language as tl

from .mma_tile import tile_nk, tile_scale, tile_zero


@triton.jit
def gemm_kernel(x_ptr, q_ptr, lut_ptr, sc_ptr, z_ptr, b_ptr, y_ptr,
                M, N, K, KP, stride_xm,
                IS_POT: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr, GROUP_RUNS: tl.constexpr,
                HAS_BIAS: tl.constexpr, SCALE_FREE: tl.constexpr, DOT_F32: tl.constexpr, JOIN_TREE: tl.constexpr,
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
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, KP, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                     mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
        z_tile = tile_zero(z_ptr, k0, offs_n, mask_n & SCALE_FREE & (not IS_POT), N, GROUP_RUNS)
        w = tile_nk(q_ptr, lut_ptr, sc_ptr, z_ptr, z_tile, k0, offs_n, mask_n, N, K, KP, GROUP_RUNS,
                    IS_POT, BITS, IS_BF16, SCALE_FREE, JOIN_TREE, BLOCK_K)
        if DOT_F32:  # interpreter only (api._dot_f32): exact upcast
            w = w.to(tl.float32)
            xt = xt.to(tl.float32)
        if SCALE_FREE:
            acc += tl.dot(xt, tl.trans(w)) * tile_scale(sc_ptr, k0, offs_n, mask_n, N, GROUP_RUNS)[None, :]
        else:
            acc = tl.dot(xt, tl.trans(w), acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)

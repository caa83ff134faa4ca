"""Large-M fused decode + tl.dot (prefill), tiled, fp32 accumulation.

Compute bound once M is in the hundreds: each program owns a ``[BLOCK_M, BLOCK_N]`` output
tile, decodes its weights once per K step (amortized over BLOCK_M rows; same tile decoder as
``small_batch``) and runs ``tl.dot``. For M in the thousands the dispatcher prefers
``api.dequant_mm`` (decode once, then cuBLAS). Program ids are swizzled in groups of ``GROUP_M`` row-tiles so
neighbouring programs share weight tiles in L2.
"""
import triton
import triton.language as tl

from .decode import dot_k_range


@triton.jit
def gemm_kernel(x_ptr, q_ptr, lut_ptr, sc_ptr, z_ptr, b_ptr, y_ptr,
                M, N, K, KP, G, stride_xm,
                IS_POT: tl.constexpr, BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr,
                IS_BF16: tl.constexpr, HAS_BIAS: tl.constexpr,
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
    acc = dot_k_range(acc, 0, KP, x_ptr, stride_xm, offs_m, mask_m, q_ptr, lut_ptr, sc_ptr, z_ptr, offs_n, mask_n,
                      N, K, KP, G, IS_POT, BITS, UNIT_WORDS, UNIT_CODES, IS_BF16, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)

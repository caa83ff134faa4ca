"""M = 2 … 64 fused decode + tl.dot (small-batch decode), split-K, fp32 accumulation.

Still weight-bandwidth bound: one program owns a ``[BLOCK_M, BLOCK_N]`` output tile and a
K-chunk; each K step decodes its weights to fp16/bf16 once (shared by the BLOCK_M rows) and
feeds ``tl.dot``. The v2 tile decoder (``decode.decode_tile``: every code gathered through the
layout table) is simple and bit-exact, not fast; the tensor-core kernels replace it. Splitting K keeps every SM streaming weights when
N / BLOCK_N alone is too few programs; partial sums go to an fp32 ``[n_split, M, N]`` buffer
reduced in split order by the last program of each tile (:func:`gemv.splitk_finish`).
"""
import triton
import triton.language as tl

from .decode import dot_k_range
from .gemv import splitk_finish


@triton.jit
def small_batch_kernel(x_ptr, q_ptr, lut_ptr, sc_ptr, z_ptr, b_ptr, y_ptr, part_ptr, cnt_ptr,
                       M, N, K, KP, G, stride_xm, k_per_split, n_split,
                       IS_POT: tl.constexpr, BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr,
                       IS_BF16: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, FUSED_REDUCE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, KP)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc = dot_k_range(acc, k_lo, k_hi, x_ptr, stride_xm, offs_m, mask_m, q_ptr, lut_ptr, sc_ptr, z_ptr, offs_n, mask_n,
                      N, K, KP, G, IS_POT, BITS, UNIT_WORDS, UNIT_CODES, IS_BF16, BLOCK_K)
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT:
        tl.store(part_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=mask)
        if FUSED_REDUCE:
            splitk_finish(part_ptr, cnt_ptr, b_ptr, y_ptr, pid_m * tl.num_programs(0) + pid_n, n_split, M * N,
                          offs_m[:, None] * N + offs_n[None, :], mask, offs_n[None, :], HAS_BIAS)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)

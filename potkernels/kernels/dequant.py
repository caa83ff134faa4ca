"""Dequant-only kernel: packed v2 PoT / int words → the ``[N, K]`` fp16/bf16 weight, bit-exact.

One program decodes a ``[BLOCK_K, BLOCK_N]`` tile with :func:`decode.decode_tile` (the tile
decoder the fused matmuls use) and stores it transposed into the row-major ``[N, K]`` output.
"""
import triton
import triton.language as tl

from .decode import decode_tile


@triton.jit
def dequant_kernel(q_ptr, lut_ptr, sc_ptr, z_ptr, out_ptr, N, K, KP, G,
                   IS_POT: tl.constexpr, BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr,
                   IS_BF16: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    k0 = tl.program_id(0) * BLOCK_K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    w = decode_tile(q_ptr, lut_ptr, sc_ptr, z_ptr, k0, offs_n, mask_n, N, K, KP, G,
                    IS_POT, BITS, UNIT_WORDS, UNIT_CODES, IS_BF16, BLOCK_K)
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask = (offs_k < K)[:, None] & mask_n[None, :]
    tl.store(out_ptr + offs_n[None, :] * K + offs_k[:, None], w, mask=mask)

"""Dequant-only kernel: packed v2 PoT / int words → the ``[N, K]`` fp16/bf16 weight, bit-exact.

One program decodes a ``[BLOCK_K, BLOCK_N]`` tile with :func:`decode.decode_tile` (the tile
decoder the fused matmuls use) and stores it transposed into the row-major ``[N, K]`` output.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import triton
import triton.language as tl

from .decode import decode_tile
from .launch import launch_opts
from .packed import Packed


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


# ------------------------------------------------------------------ host side
def launch(w: Packed, dtype: torch.dtype, cfg: dict[str, Any], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decoded ``[N, K]`` fp16/bf16 weight, bit-exact with the reference decode."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"dequantize dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    bk, bn = int(cfg["BLOCK_K"]), int(cfg["BLOCK_N"])
    out = torch.empty((w.N, w.K), dtype=dtype, device=w.device) if out is None else out
    grid = (triton.cdiv(w.KP, bk), triton.cdiv(w.N, bn))
    dequant_kernel[grid](w.q, w.lut, w.scales, w.zeros, out, w.N, w.K, w.KP, w.G, **w.code_constexprs(),
                         IS_BF16=dtype == torch.bfloat16, BLOCK_K=bk, BLOCK_N=bn, **launch_opts(cfg))
    return out


def candidates(m: int) -> list[dict[str, Any]]:
    """The tuner's search space (``tune.py``)."""
    return [dict(BLOCK_K=k, BLOCK_N=n, num_warps=4, num_stages=1) for k in (32, 64, 128) for n in (64, 128, 256)]

"""Dispatch: check the activations, pick a regime by M and its config (table, or ``tune``), call the
regime's launcher (``gemv.launch``, ``small_batch.launch``, ``gemm.launch``, ``dequant.launch``).

Public entry points (the ones ``potkernels.ops`` calls) are re-exported by ``__init__``. Every
function takes the raw packed tensors so the registered custom ops can call it directly.
``config=`` (a dict) overrides the table lookup, ``regime=`` the dispatch by M; tests and the
tuner use both.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from . import configs, dequant, gemm, gemv, small_batch, tune
from .packed import Packed

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
REGIMES = ("gemv", "small_batch", "gemm", "dequant_mm")


def _cfg(regime: str, w: Packed, m: int, config: Optional[dict[str, Any]],
         dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """The launch config: ``config`` as given, else the table's (after tuning it when autotune is on)."""
    if config is not None:
        return dict(config)
    if tune.autotune_enabled():
        tune.maybe_tune(regime, w, m, dtype, run_regime)
    return configs.lookup(regime, w.kind, w.bits, m, w.N, w.K)


# ------------------------------------------------------------------ dequant
def dequantize(w: Packed, dtype: torch.dtype, config: Optional[dict[str, Any]] = None,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decoded ``[N, K]`` fp16/bf16 weight, bit-exact with the reference decode (``dequant.py``)."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"dequantize dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    return dequant.launch(w, dtype, _cfg("dequant", w, 1, config, dtype), out)


def dequant_mm(x: torch.Tensor, w: Packed, bias: Optional[torch.Tensor], y: torch.Tensor,
               config: Optional[dict[str, Any]] = None) -> torch.Tensor:
    """Decode W once (bit-exact kernel, 2 B/weight written) and let cuBLAS multiply.

    Never picked by the dispatcher (no committed measurement shows it ahead of the fused
    kernels); kept as a regime one can force (``regime="dequant_mm"``) to compare against.
    """
    wd = dequantize(w, x.dtype, config)
    torch.matmul(x, wd.t(), out=y)
    if bias is not None:
        y += bias.to(y.dtype)
    return y


_LAUNCH = {"gemv": gemv.launch, "small_batch": small_batch.launch, "gemm": gemm.launch}


def run_regime(regime: str, w: Packed, x: torch.Tensor, y: Optional[torch.Tensor], config: dict[str, Any]):
    """One launch of ``regime`` (or the dequant kernel) with an explicit config (what ``tune`` times)."""
    if regime == "dequant":
        return dequantize(w, x.dtype if x.dtype != torch.float32 else torch.float16, config)
    return matmul(x, w, None, regime=regime, config=config, out=y)


def pick_regime(w: Packed, m: int, device: Optional[str] = None) -> str:
    """M ≤ gemv_max_m → gemv, ≤ small_batch_max_m → small_batch, else gemm (thresholds in the
    config table, per GPU; ``device``: a table entry name, default this process's GPU). ``dequant_mm``
    is only used when forced, or where a table entry sets ``dequant_mm_min_m`` (to be backed by a
    committed measurement)."""
    d = configs.lookup("dispatch", w.kind, w.bits, m, w.N, w.K, device=device)
    if m <= int(d["gemv_max_m"]):
        return "gemv"
    if m <= int(d["small_batch_max_m"]):
        return "small_batch"
    return "dequant_mm" if m >= int(d.get("dequant_mm_min_m", 1 << 62)) else "gemm"


def matmul(x2d: torch.Tensor, w: Packed, bias: Optional[torch.Tensor] = None, regime: Optional[str] = None,
           config: Optional[dict[str, Any]] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x2d [M, K] @ W^T (+ bias) → [M, N]`` in x's dtype (fp32 x computes in fp16 on the dot paths)."""
    if not isinstance(x2d, torch.Tensor) or x2d.dtype not in ACT_DTYPES:
        raise TypeError(f"x must be an fp16, bf16 or fp32 tensor, got {getattr(x2d, 'dtype', type(x2d))}")
    if x2d.dim() != 2 or x2d.shape[1] != w.K:
        raise ValueError(f"x must be [M, {w.K}] (in_features = {w.K}), got {list(x2d.shape)}")
    if x2d.device != w.device:
        raise ValueError(f"x is on {x2d.device} but the weight is on {w.device}")
    if bias is not None and (bias.shape != (w.N,) or bias.device != w.device):
        raise ValueError(f"bias must be [{w.N}] on {w.device}, got {list(bias.shape)} on {bias.device}")
    m = x2d.shape[0]
    y = torch.empty((m, w.N), dtype=x2d.dtype, device=w.device) if out is None else out
    if m == 0:
        return y
    regime = regime or pick_regime(w, m)
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    x = x2d.contiguous()
    bias = bias.contiguous() if bias is not None else None
    if regime != "gemv" and x.dtype == torch.float32:  # the dot paths take fp16 operands
        x = x.to(torch.float16)
    yd = y if y.dtype == x.dtype else torch.empty((m, w.N), dtype=x.dtype, device=w.device)
    if regime == "dequant_mm":
        dequant_mm(x, w, bias, yd)  # the dequant kernel's own table entry
    else:
        _LAUNCH[regime](x, w, bias, yd, _cfg(regime, w, m, config, x.dtype))
    if yd is not y:
        y.copy_(yd)
    return y


# ------------------------------------------------------------------ the four entry points of ops.py
def pot_dequantize_triton(qweight, scales, bits, group_size, in_features, dtype, *, config=None, out=None):
    """PoT v2 words → ``[N, K]`` fp16/bf16 (bit-exact with ``format.pot.decode_pot``)."""
    return dequantize(Packed("pot", qweight, scales, None, bits, group_size, in_features), dtype, config, out)


def int_dequantize_triton(qweight, scales, zeros, bits, group_size, in_features, dtype, *, config=None, out=None):
    """Int v2 words → ``[N, K]`` fp16/bf16 (bit-exact with ``format.uniform.decode_int``)."""
    return dequantize(Packed("int", qweight, scales, zeros, bits, group_size, in_features), dtype, config, out)


def pot_matmul_triton(x2d, qweight, scales, bias, bits, group_size, in_features, *,
                      regime=None, config=None, out=None):
    """``x2d [M, K] @ W_pot^T (+ bias) → [M, N]`` in x's dtype; regime picked by M unless given."""
    w = Packed("pot", qweight, scales, None, bits, group_size, in_features)
    return matmul(x2d, w, bias, regime, config, out)


def int_matmul_triton(x2d, qweight, scales, zeros, bias, bits, group_size, in_features, *,
                      regime=None, config=None, out=None):
    """``x2d [M, K] @ W_int^T (+ bias) → [M, N]`` in x's dtype; the uniform-int twin."""
    w = Packed("int", qweight, scales, zeros, bits, group_size, in_features)
    return matmul(x2d, w, bias, regime, config, out)

"""Host side: check the packed tensors, pick a regime and a config, launch.

Public entry points (the ones ``potkernels.ops`` calls) are re-exported by ``__init__``. Every
function takes the raw packed tensors so the registered custom ops can call it directly.
``config=`` (a dict) overrides the table lookup, ``regime=`` the dispatch by M; tests and the
tuner use both.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import triton

from . import configs, tune
from .dequant import dequant_kernel
from .gemm import gemm_kernel
from .gemv import gemv_kernel, splitk_reduce_kernel
from .packed import Packed
from .small_batch import small_batch_kernel

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
REGIMES = ("gemv", "small_batch", "gemm", "dequant_mm")


def _cfg(regime: str, w: Packed, m: int, config: Optional[dict[str, Any]],
         dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    if config is not None:
        return dict(config)
    if tune.autotune_enabled():
        tune.maybe_tune(regime, w, m, dtype, run_regime)
    return configs.lookup(regime, w.kind, w.bits, m, w.N, w.K)


def _launch_opts(cfg: dict[str, Any]) -> dict[str, int]:
    """Compile options of a launch; ``maxnreg`` caps registers per thread (two CTAs per SM where the
    speed model says occupancy matters)."""
    opts = {"num_warps": int(cfg.get("num_warps", 4)), "num_stages": int(cfg.get("num_stages", 2))}
    if "maxnreg" in cfg:
        opts["maxnreg"] = int(cfg["maxnreg"])
    return opts


# ------------------------------------------------------------------ dequant
def dequantize(w: Packed, dtype: torch.dtype, config: Optional[dict[str, Any]] = None,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decoded ``[N, K]`` fp16/bf16 weight, bit-exact with the reference decode."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"dequantize dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    cfg = _cfg("dequant", w, 1, config, dtype)
    bk, bn = int(cfg["BLOCK_K"]), int(cfg["BLOCK_N"])
    out = torch.empty((w.N, w.K), dtype=dtype, device=w.device) if out is None else out
    grid = (triton.cdiv(w.KP, bk), triton.cdiv(w.N, bn))
    dequant_kernel[grid](w.q, w.lut, w.scales, w.zeros, out, w.N, w.K, w.KP, w.G, **w.code_constexprs(),
                         IS_BF16=dtype == torch.bfloat16, BLOCK_K=bk, BLOCK_N=bn, **_launch_opts(cfg))
    return out


# ------------------------------------------------------------------ matmul regimes
def _n_split(tiles: int, k_steps: int, cfg: dict[str, Any], device: torch.device) -> int:
    """Split K until tiles × splits covers ``waves`` × #SMs (never more splits than K steps)."""
    if "split" in cfg:
        return max(1, min(int(cfg["split"]), k_steps))
    target = int(cfg.get("waves", 2)) * configs.sm_count(device.index)
    return max(1, min(triton.cdiv(target, tiles), k_steps))


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Per-output-tile arrival counters of the single-launch split-K (zero between launches:
    the last program of a tile resets its counter). One buffer per device, grown on demand.
    Calls on concurrent CUDA streams must use ``reduce: "kernel"`` configs."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def _reduce(part: torch.Tensor, bias: Optional[torch.Tensor], y: torch.Tensor, n_split: int, n: int) -> None:
    mn = y.numel()
    block = 1024
    splitk_reduce_kernel[(triton.cdiv(mn, block),)](part, bias if bias is not None else part, y, mn, n, n_split,
                                                     HAS_BIAS=bias is not None, BLOCK=block, num_warps=4)


def use_asm(device: torch.device) -> bool:
    """Inline PTX on compiled CUDA runs; the pure-Triton twin under the interpreter (or when
    ``POTKERNELS_NO_ASM=1``, e.g. to compare the twins bit for bit on a GPU)."""
    import os

    return device.type == "cuda" and not configs.interpreting() and os.environ.get("POTKERNELS_NO_ASM", "0") in ("", "0")


GEMV_KEYS = {"rows_per_program", "BLOCK_N", "BLOCK_R", "num_warps", "num_stages", "waves", "split", "reduce"}


def _gemv_tiles(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_R, most x rows per program) of a gemv config, checked before any launch."""
    unknown = set(cfg) - GEMV_KEYS
    if unknown:
        raise ValueError(f"unknown gemv config keys {sorted(unknown)} (allowed: {sorted(GEMV_KEYS)})")
    bn, br, bm = int(cfg["BLOCK_N"]), int(cfg.get("BLOCK_R", 1)), int(cfg.get("rows_per_program", 8))
    for name, v, lo in (("BLOCK_N", bn, 16), ("BLOCK_R", br, 1), ("rows_per_program", bm, 1)):
        if v < lo or v & (v - 1):
            raise ValueError(f"gemv {name} must be a power of two >= {lo}, got {v}")
    return bn, br, bm


def gemv(x: torch.Tensor, w: Packed, bias: Optional[torch.Tensor], y: torch.Tensor,
         config: Optional[dict[str, Any]] = None) -> torch.Tensor:
    """``y = x Wᵀ (+ bias)`` on CUDA cores for a few rows (M = 1 regime, and small M where the table
    says so): each program decodes its weights once for up to ``BLOCK_M`` rows; x any of fp16/bf16/fp32.

    fp16 x accumulates in fp16x2 runs of 32 k (exact products, FORMAT.md §6 bound; needs
    max|x| < 4096), bf16/fp32 x in fp32.
    """
    m = x.shape[0]
    cfg = _cfg("gemv", w, m, config, x.dtype)
    bn, br, max_bm = _gemv_tiles(cfg)
    # fp16 x shares one decode across rows; bf16/fp32 x keeps a row per program (its fp32 lanes per row
    # would spill), so each of those rows streams W once
    bm = min(triton.next_power_of_2(m), max_bm) if x.dtype == torch.float16 else 1
    n_runs = w.KP // 32
    tiles = triton.cdiv(w.N, bn)
    row_blocks = triton.cdiv(m, bm)
    n_split = _n_split(tiles * row_blocks, triton.cdiv(n_runs, br), cfg, w.device)
    runs_per_split = triton.cdiv(triton.cdiv(n_runs, br), n_split) * br  # whole loop steps per split
    n_split = triton.cdiv(n_runs, runs_per_split)
    split = n_split > 1
    part = torch.empty((n_split, m, w.N), dtype=torch.float32, device=w.device) if split else y
    fused = split and cfg.get("reduce", "fused") == "fused"
    cnt = _counters(w.device, tiles * row_blocks) if fused else part
    gemv_kernel[(tiles, n_split, row_blocks)](
        x, w.q, w.scales, w.zeros, bias if bias is not None else w.scales, y, part, cnt, m, w.N, w.K, w.KP,
        x.stride(0), runs_per_split, n_split, IS_POT=w.is_pot, BITS=w.bits, X_F16=x.dtype == torch.float16,
        HAS_BIAS=bias is not None, SPLIT=split, FUSED_REDUCE=fused, EVEN_K=w.K % 32 == 0,
        USE_ASM=use_asm(w.device), GROUP_RUNS=w.group_runs(), BLOCK_M=bm, BLOCK_N=bn, BLOCK_R=br,
        NUM_STAGES=int(cfg.get("num_stages", 3)), num_warps=int(cfg.get("num_warps", 4)))
    if split and not fused:
        _reduce(part, bias, y, n_split, w.N)
    return y


MMA_KEYS = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "maxnreg", "scale", "expand",
            "waves", "split", "reduce",  # small_batch: split-K
            "GROUP_M"}  # gemm: L2 swizzle


def _mma_tiles(regime: str, cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) of a tensor-core regime, checked before any launch."""
    unknown = set(cfg) - MMA_KEYS
    if unknown:
        raise ValueError(f"unknown {regime} config keys {sorted(unknown)} (allowed: {sorted(MMA_KEYS)})")
    bm, bn, bk = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"]), int(cfg["BLOCK_K"])
    min_bk = 128 if regime == "gemm" else 32  # gemm: smaller K tiles trip Triton's layout pass
    for name, v, lo in (("BLOCK_M", bm, 16), ("BLOCK_N", bn, 16), ("BLOCK_K", bk, min_bk)):
        if v < lo or v & (v - 1):
            raise ValueError(f"{regime} {name} must be a power of two >= {lo} (tl.dot tiles), got {v}")
    return bm, bn, bk


def _scale_free(cfg: dict[str, Any], w: Packed, block_k: int, default: str) -> bool:
    """Apply the group scale to the MMA result (``scale: "acc"``) when every K tile lies in one
    group; otherwise (or ``scale: "weight"``) fold it into each decoded weight."""
    mode = cfg.get("scale", default)
    if mode not in ("acc", "weight"):
        raise ValueError(f"scale must be 'acc' or 'weight', got {mode!r}")
    return mode == "acc" and (w.G % block_k == 0 or w.G >= w.K)


def _join_tree(cfg: dict[str, Any]) -> bool:
    """Tile expansion (``mma_tile.tile_nk``): "join" (in-thread runs, compiled default) or
    "broadcast" (the interpreter's default: same values, far fewer interpreted calls)."""
    mode = cfg.get("expand", "broadcast" if configs.interpreting() else "join")
    if mode not in ("join", "broadcast"):
        raise ValueError(f"expand must be 'join' or 'broadcast', got {mode!r}")
    return mode == "join"


def _dot_f32() -> bool:
    """Under the interpreter the kernels upcast both operands to fp32 before ``tl.dot`` (exact:
    fp16/bf16 values and their products are fp32-exact, and the MMA accumulates in fp32 too):
    its bf16 dot is wrong and its fp16 dot a slow non-BLAS numpy loop. Compiled kernels feed
    fp16/bf16 to the tensor cores."""
    return configs.interpreting()


def small_batch(x: torch.Tensor, w: Packed, bias: Optional[torch.Tensor], y: torch.Tensor,
                config: Optional[dict[str, Any]] = None) -> torch.Tensor:
    """Swap-AB tensor-core regime (M = 2 … 128): ``yᵀ = W xᵀ``, split-K; x fp16/bf16."""
    m = x.shape[0]
    cfg = _cfg("small_batch", w, m, config, x.dtype)
    bm, bn, bk = _mma_tiles("small_batch", cfg)
    tiles = triton.cdiv(w.N, bn) * triton.cdiv(m, bm)
    k_steps = triton.cdiv(w.KP, bk)
    n_split = _n_split(tiles, k_steps, cfg, w.device)
    k_per_split = triton.cdiv(k_steps, n_split) * bk
    n_split = triton.cdiv(w.KP, k_per_split)
    split = n_split > 1
    part = torch.empty((n_split, m, w.N), dtype=torch.float32, device=w.device) if split else y
    grid = (triton.cdiv(w.N, bn), n_split, triton.cdiv(m, bm))
    fused = split and cfg.get("reduce", "fused") == "fused"
    cnt = _counters(w.device, grid[0] * grid[2]) if fused else part
    small_batch_kernel[grid](x, w.q, w.lut, w.scales, w.zeros, bias if bias is not None else w.scales, y, part, cnt,
                             m, w.N, w.K, w.KP, x.stride(0), k_per_split, n_split, GROUP_RUNS=w.group_runs(),
                             IS_POT=w.is_pot, BITS=w.bits, IS_BF16=x.dtype == torch.bfloat16,
                             HAS_BIAS=bias is not None, SPLIT=split, FUSED_REDUCE=fused,
                             SCALE_FREE=_scale_free(cfg, w, bk, "acc"), DOT_F32=_dot_f32(),
                             JOIN_TREE=_join_tree(cfg), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **_launch_opts(cfg))
    if split and not fused:
        _reduce(part, bias, y, n_split, w.N)
    return y


def gemm(x: torch.Tensor, w: Packed, bias: Optional[torch.Tensor], y: torch.Tensor,
         config: Optional[dict[str, Any]] = None) -> torch.Tensor:
    """Tiled tensor-core regime for large M (prefill); x fp16/bf16."""
    m = x.shape[0]
    cfg = _cfg("gemm", w, m, config, x.dtype)
    bm, bn, bk = _mma_tiles("gemm", cfg)
    grid = (triton.cdiv(m, bm) * triton.cdiv(w.N, bn),)
    gemm_kernel[grid](x, w.q, w.lut, w.scales, w.zeros, bias if bias is not None else w.scales, y,
                      m, w.N, w.K, w.KP, x.stride(0), GROUP_RUNS=w.group_runs(), IS_POT=w.is_pot, BITS=w.bits,
                      IS_BF16=x.dtype == torch.bfloat16, HAS_BIAS=bias is not None,
                      SCALE_FREE=_scale_free(cfg, w, bk, "weight"), DOT_F32=_dot_f32(), JOIN_TREE=_join_tree(cfg),
                      BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=int(cfg.get("GROUP_M", 8)), **_launch_opts(cfg))
    return y


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


_REGIME_FN = {"gemv": gemv, "small_batch": small_batch, "gemm": gemm, "dequant_mm": dequant_mm}


def run_regime(regime: str, w: Packed, x: torch.Tensor, y: Optional[torch.Tensor], config: dict[str, Any]):
    """One launch of ``regime`` (or the dequant kernel) with an explicit config (what ``tune`` times)."""
    if regime == "dequant":
        return dequantize(w, x.dtype if x.dtype != torch.float32 else torch.float16, config)
    return matmul(x, w, None, regime=regime, config=config, out=y)


def pick_regime(w: Packed, m: int) -> str:
    """M ≤ gemv_max_m → gemv, ≤ small_batch_max_m → small_batch, else gemm (thresholds in the
    config table, per GPU). ``dequant_mm`` is only used when forced, or where a table entry
    sets ``dequant_mm_min_m`` (to be backed by a committed measurement)."""
    d = configs.lookup("dispatch", w.kind, w.bits, m, w.N, w.K)
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
    if regime not in _REGIME_FN:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    x = x2d.contiguous()
    bias = bias.contiguous() if bias is not None else None
    if regime != "gemv" and x.dtype == torch.float32:  # the dot paths take fp16 operands
        y16 = _REGIME_FN[regime](x.to(torch.float16), w, bias, torch.empty((m, w.N), dtype=torch.float16,
                                                                            device=w.device), config if regime != "dequant_mm" else None)
        y.copy_(y16)
        return y
    if regime == "dequant_mm":
        config = None  # the dequant kernel's own table entry
    return _REGIME_FN[regime](x, w, bias, y, config)


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

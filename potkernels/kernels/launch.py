"""Host-side helpers every regime's launcher shares: compile options, the split-K count and buffers,
the PTX-or-twin switch, and the checks of tensor-core configs. Each regime's launcher lives in its own
file (``gemv.py``, ``small_batch.py``, ``gemm.py``, ``dequant.py``) and takes an already resolved config
(``api`` looks it up in the table, or tunes it)."""
from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
import triton

from . import configs
from .packed import Packed
from .splitk import splitk_reduce_kernel


def launch_opts(cfg: dict[str, Any]) -> dict[str, int]:
    """Compile options of a launch; ``maxnreg`` caps registers per thread (two CTAs per SM where the
    speed model says occupancy matters)."""
    opts = {"num_warps": int(cfg.get("num_warps", 4)), "num_stages": int(cfg.get("num_stages", 2))}
    if "maxnreg" in cfg:
        opts["maxnreg"] = int(cfg["maxnreg"])
    return opts


def split_count(tiles: int, k_steps: int, cfg: dict[str, Any], sms: int) -> int:
    """Split-K count: the most splits whose programs (tiles × splits) fit in ``waves`` programs per SM
    (never more splits than K steps, at least one). Rounding down, not up: a config's ``waves`` is the
    CTAs an SM runs at once, and one program past that starts a second, almost empty round
    (at M = 64 the old round-up rule sent 24 of 288 programs round again: 1.56× → 1.75× by the speed model).
    An explicit ``split`` wins."""
    if "split" in cfg:
        return max(1, min(int(cfg["split"]), k_steps))
    return max(1, min(int(cfg.get("waves", 2)) * sms // tiles, k_steps))


def n_split(tiles: int, k_steps: int, cfg: dict[str, Any], device: torch.device) -> int:
    """:func:`split_count` on ``device``'s SM count."""
    return split_count(tiles, k_steps, cfg, configs.sm_count(device.index))


def stream_programs(cfg: dict[str, Any], sms: int) -> int:
    """Programs a stream-K launch runs: ``waves`` per SM (an explicit ``programs`` wins)."""
    if "programs" in cfg:
        return max(1, int(cfg["programs"]))
    return max(1, int(cfg.get("waves", 1))) * sms


def stream_parts(k_steps: int, units_per_program: int) -> int:
    """The most programs that share one output tile of ``k_steps`` K steps when each program takes
    ``units_per_program`` consecutive (tile, K step) units: the partial sums one tile may need. A tile
    starts at offset ``t·k_steps mod units_per_program`` inside a program's run, a multiple of their gcd."""
    return (units_per_program - math.gcd(k_steps, units_per_program) + k_steps - 1) // units_per_program + 1


def stream_geometry(tiles: int, k_steps: int, cfg: dict[str, Any], sms: int) -> tuple[int, int, int]:
    """(programs, units per program, most programs sharing one tile) of a stream-K launch over ``tiles`` ×
    ``k_steps`` (tile, K step) units: :func:`stream_programs` programs at most, each the same share."""
    units = tiles * k_steps
    per = triton.cdiv(units, min(units, stream_programs(cfg, sms)))
    return triton.cdiv(units, per), per, stream_parts(k_steps, per)


def stream_k(cfg: dict[str, Any]) -> bool:
    """small_batch's schedule: "split" (split-K: every tile split into the same K ranges, a grid of tiles ×
    splits) or "stream" (stream-K: ``waves`` × SMs programs, each the same share of all tiles' K steps)."""
    mode = cfg.get("schedule", "split")
    if mode not in ("split", "stream"):
        raise ValueError(f"schedule must be 'split' or 'stream', got {mode!r}")
    if mode == "stream" and cfg.get("reduce", "fused") != "fused":
        raise ValueError("schedule 'stream' adds its partial sums in the launch (reduce 'fused' only)")
    return mode == "stream"


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def counters(device: torch.device, n: int) -> torch.Tensor:
    """Per-output-tile arrival counters of the single-launch split-K (zero between launches:
    the last program of a tile resets its counter). One buffer per device, grown on demand.
    Calls on concurrent CUDA streams must use ``reduce: "kernel"`` configs."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def reduce_partials(part: torch.Tensor, bias: Optional[torch.Tensor], y: torch.Tensor, n_split: int, n: int) -> None:
    """``y = Σ_s part[s] (+ bias)`` by a second launch (``reduce: "kernel"`` configs)."""
    mn = y.numel()
    block = 1024
    splitk_reduce_kernel[(triton.cdiv(mn, block),)](part, bias if bias is not None else part, y, mn, n, n_split,
                                                     HAS_BIAS=bias is not None, BLOCK=block, num_warps=4)


def use_asm(device: torch.device) -> bool:
    """Inline PTX on compiled CUDA runs; the pure-Triton twin under the interpreter (or when
    ``POTKERNELS_NO_ASM=1``, e.g. to compare the twins bit for bit on a GPU)."""
    return device.type == "cuda" and not configs.interpreting() and os.environ.get("POTKERNELS_NO_ASM", "0") in ("", "0")


MMA_KEYS = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "maxnreg", "scale", "expand",
            "waves", "split", "reduce", "k_order", "schedule", "programs",  # small_batch: split/stream-K, column order
            "GROUP_M"}  # gemm: L2 swizzle


def mma_tiles(regime: str, cfg: dict[str, Any]) -> tuple[int, int, int]:
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


def scale_free(cfg: dict[str, Any], w: Packed, block_k: int, default: str) -> bool:
    """Apply the group scale to the MMA result (``scale: "acc"``) when every K tile lies in one
    group; otherwise (or ``scale: "weight"``) fold it into each decoded weight."""
    mode = cfg.get("scale", default)
    if mode not in ("acc", "weight"):
        raise ValueError(f"scale must be 'acc' or 'weight', got {mode!r}")
    return mode == "acc" and (w.G % block_k == 0 or w.G >= w.K)


def word_loads(w: Packed) -> bool:
    """Whether the tensor-core kernels load PoT fp16 scales as the aligned 32-bit words that hold them
    (``mma_tile.tile_word``; int ``[scale | zero]`` words always are): ``N`` even, so no word reaches past the
    tensor's end, and the scales 4-byte aligned (a view into a larger buffer may not be: a misaligned 32-bit load
    faults on a GPU)."""
    return w.N % 2 == 0 and w.scales.data_ptr() % 4 == 0


def join_tree(cfg: dict[str, Any]) -> bool:
    """Tile expansion (``mma_tile.tile_nk``): "join" (in-thread runs, compiled default) or
    "broadcast" (the interpreter's default: same values, far fewer interpreted calls)."""
    mode = cfg.get("expand", "broadcast" if configs.interpreting() else "join")
    if mode not in ("join", "broadcast"):
        raise ValueError(f"expand must be 'join' or 'broadcast', got {mode!r}")
    return mode == "join"


def frag_k(cfg: dict[str, Any], block_k: int) -> bool:
    """Decoded-tile column order of the swap-AB kernel (``mma_tile.tile_k``): "frag" (the MMA operand's:
    no shared-memory round trip of the decoded tile; needs ``BLOCK_K`` a multiple of 128, the default
    there) or "natural"."""
    mode = cfg.get("k_order", "frag" if block_k % 128 == 0 else "natural")
    if mode not in ("frag", "natural"):
        raise ValueError(f"k_order must be 'frag' or 'natural', got {mode!r}")
    if mode == "frag" and block_k % 128:
        raise ValueError(f"k_order 'frag' needs BLOCK_K a multiple of 128, got {block_k}")
    return mode == "frag"


def dot_f32() -> bool:
    """Under the interpreter the kernels upcast both operands to fp32 before ``tl.dot`` (exact:
    fp16/bf16 values and their products are fp32-exact, and the MMA accumulates in fp32 too):
    its bf16 dot is wrong and its fp16 dot a slow non-BLAS numpy loop. Compiled kernels feed
    fp16/bf16 to the tensor cores."""
    return configs.interpreting()

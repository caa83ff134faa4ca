"""Optional autotuning: time a few candidate configs per regime and write the best into the table.

Never runs by itself. Call :func:`tune` (e.g. from ``bench/matmul.py --tune``) or set
``POTKERNELS_AUTOTUNE=1`` so the first call of an untuned (regime, code, M bucket, size) key on
this GPU tunes it once (a few seconds) and stores it. Needs a GPU: under the interpreter the
fixed "interpreter" config is always used.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch

from . import configs, dequant, gemm, gemv, small_batch


def graph_time_ms(fn, rep_ms: float = 20, calls: int = 8) -> float:
    """Median ms of one ``fn()`` from CUDA-graph replays of ``calls`` launches.

    Python launch overhead of a Triton kernel (tens of µs) is as large as the kernels tuned here
    at small M, so eager timing would rank configs by host noise; graph replays time the GPU.
    """
    import statistics

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times: list[float] = []
    budget = rep_ms
    while budget > 0 or len(times) < 5:
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        t = start.elapsed_time(end)
        times.append(t / calls)
        budget -= t
    return statistics.median(times)


def candidates(regime: str, m: int) -> list[dict[str, Any]]:
    """A small search space per regime (≤ ~48 configs, so tuning one key takes seconds), kept beside
    each regime's kernel (``<regime>.candidates``)."""
    spaces = {"gemv": gemv.candidates, "small_batch": small_batch.candidates, "gemm": gemm.candidates,
              "dequant": dequant.candidates}
    if regime not in spaces:
        raise ValueError(f"no candidates for regime {regime!r}")
    return spaces[regime](m)


Runner = Callable[[str, Any, torch.Tensor, Optional[torch.Tensor], dict[str, Any]], Any]


def tune_packed(regime: str, w, m: int, runner: Runner, dtype: torch.dtype = torch.float16, write: bool = True,
                rep_ms: int = 20) -> tuple[dict[str, Any], float]:
    """Best config for ``regime`` on the live packed weight ``w`` (a ``packed.Packed``) at batch ``m``.

    ``runner(regime, w, x, y, config)`` launches one call (``api.run_regime``); passing it in keeps
    this module free of an import of ``api`` (which imports this module).
    """
    if configs.interpreting() or not w.device.type == "cuda":
        raise RuntimeError("tuning needs a CUDA device with TRITON_INTERPRET unset")
    x = torch.randn(max(m, 1), w.K, device=w.device, dtype=dtype)
    y = torch.empty(max(m, 1), w.N, device=w.device, dtype=dtype)
    best: Optional[tuple[float, dict[str, Any]]] = None
    for cfg in candidates(regime, m):
        fn = lambda: runner(regime, w, x, y, cfg)  # noqa: E731
        try:
            ms = graph_time_ms(fn, rep_ms)
        except Exception:  # a config that does not compile / fit (shared memory, registers): skip it
            continue
        if best is None or ms < best[0]:
            best = (ms, cfg)
    if best is None:
        raise RuntimeError(f"no candidate config ran for {regime}")
    if write:
        configs.store(regime, configs.make_key(w.kind, w.bits, m, w.N, w.K), best[1])
    return best[1], best[0]


def tune(kind: str, bits: int, ms: list[int], shapes: list[tuple[int, int]], runner: Runner,
         pick_regime: Callable[[Any, int], str], group_size: int = 128, regimes: Optional[list[str]] = None,
         write: bool = True) -> list[dict[str, Any]]:
    """Tune every (M, K×N shape) on random weights; returns one record per key, writes the table.
    ``runner`` / ``pick_regime``: ``api.run_regime`` / ``api.pick_regime``."""
    from ..format import IntConfig, PoTConfig, quantize_int, quantize_pot
    from .packed import Packed

    out = []
    for k, n in shapes:
        wf = torch.randn(n, k, device="cuda")
        if kind == "pot":
            p = quantize_pot(wf, PoTConfig(bits, group_size))
            w = Packed("pot", p.qweight, p.scales, None, bits, p.group_size, k)
        else:
            p = quantize_int(wf, IntConfig(bits, group_size))
            w = Packed("int", p.qweight, p.scales, p.zeros, bits, p.group_size, k)
        for m in ms:
            # dequant_mm's only kernel is the dequant one
            regime_list = [r if r != "dequant_mm" else "dequant" for r in (regimes or [pick_regime(w, m)])]
            for regime in regime_list:
                cfg, t = tune_packed(regime, w, m, runner, write=write)
                out.append({"kind": kind, "bits": bits, "m": m, "k": k, "n": n, "regime": regime, "ms": t,
                            "config": cfg})
    return out


_TUNED: set[tuple] = set()


def autotune_enabled() -> bool:
    return os.environ.get("POTKERNELS_AUTOTUNE", "0") not in ("", "0") and not configs.interpreting()


def maybe_tune(regime: str, w, m: int, dtype: torch.dtype, runner: Runner) -> None:
    """Under POTKERNELS_AUTOTUNE=1: tune this key once per process if the GPU's table lacks it."""
    key = (regime, configs.make_key(w.kind, w.bits, m, w.N, w.K))
    if key in _TUNED:
        return
    _TUNED.add(key)
    table = configs._table(str(configs.table_path()))
    if key[1] in table.get(configs.device_name(), {}).get(regime, {}):
        return
    try:
        tune_packed(regime, w, m, runner, dtype)
    except OSError:  # read-only table: keep the result in this process only
        pass

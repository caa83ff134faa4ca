"""Shared benchmark plumbing: device, timing, HBM bandwidth, rotation, results folder, table, JSON."""
from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/x.py` from the repo root
    sys.path.insert(0, str(REPO))

from potkernels.cli_help import HelpFormatter  # noqa: E402,F401  (re-exported for the scripts)


def pick_device(name: str | None) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if name == "cuda" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET to benchmark compiled kernels on the GPU")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def results_dir(device: torch.device) -> Path:
    """``$OUT/bench/results/<device slug>`` when $OUT is set (device runs), else ``bench/results/<slug>``."""
    root = Path(os.environ["OUT"]) / "bench" if os.environ.get("OUT") else REPO / "bench"
    path = root / "results" / slug(device_name(device))
    path.mkdir(parents=True, exist_ok=True)
    return path


def metadata(device: torch.device) -> dict[str, Any]:
    import triton

    meta = {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        meta.update(sm_count=p.multi_processor_count, l2_bytes=getattr(p, "L2_cache_size", None),
                    memory_bytes=p.total_memory)
    return meta


def l2_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20) or 50 << 20)
    return 32 << 20


def bench(fn: Callable[[], Any], device: torch.device, warmup_ms: float = 10, rep_ms: float = 40,
          calls_per_graph: int = 16) -> float:
    """Median milliseconds of one call of ``fn``.

    On CUDA the calls are captured in a CUDA graph (``calls_per_graph`` consecutive calls, so a
    ``Rotation`` inside ``fn`` is captured over its different buffers) and the graph replays are
    timed with events: Python launch overhead (tens of µs for a Triton launch) stays out of the
    kernel time. Where capture fails, ``triton.testing.do_bench`` (L2 flushed per run) is used.
    On CPU: wall-clock median.
    """
    if device.type == "cuda":
        try:
            return _bench_graph(fn, warmup_ms, rep_ms, calls_per_graph)
        except Exception as e:  # noqa: BLE001 - e.g. a host sync inside fn; fall back, say so
            print(f"    (CUDA graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}; using do_bench)")
            torch.cuda.synchronize()
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    times, t_end = [], time.perf_counter() + rep_ms / 1e3
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _bench_graph(fn: Callable[[], Any], warmup_ms: float, rep_ms: float, calls: int) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as graph capture requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    for _ in range(max(1, int(warmup_ms / one))):
        graph.replay()
    times = []
    for _ in range(max(5, int(rep_ms / one))):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del graph
    return statistics.median(times)


def hbm_bandwidth_gbs(device: torch.device, gib: float = 1.0) -> float:
    """Device-to-device copy of a large buffer: (read + write bytes) / time, in GB/s."""
    n = int(gib * (1 << 30)) // 4 if device.type == "cuda" else (64 << 20) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device, 10, 100)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


class Rotation:
    """Cycle through ``copies`` argument sets so consecutive calls touch different memory."""

    def __init__(self, make: Callable[[int], Any], set_bytes: int, device: torch.device, max_copies: int = 16):
        self.copies = max(2, min(max_copies, math.ceil(2 * l2_bytes(device) / max(set_bytes, 1))))
        self.sets = [make(i) for i in range(self.copies)]
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % self.copies
        return self.sets[self.i]


def print_table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_json(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]], **extra) -> None:
    path.write_text(json.dumps({"meta": meta, **extra, "rows": rows}, indent=1) + "\n")
    if extra.get("complete", True):
        print(f"wrote {path}")



def save_plot(plot: Callable[..., None], *args: Any, path: Path) -> bool:
    """``plot(*args, path)`` when matplotlib is installed; otherwise one line saying the PNG was skipped
    (matplotlib is optional: ``pip install -e ".[bench]"``). Returns whether the PNG was written."""
    if importlib.util.find_spec("matplotlib") is None:
        print(f"note: matplotlib is not installed, so {path.name} was not drawn; the JSON holds every number "
              "(pip install matplotlib for the plot)")
        return False
    plot(*args, path)
    return True


def baseline_name(device: torch.device) -> str:
    """The float matmul the kernels are compared with: fp16 ``F.linear`` on a GPU, fp32 on a CPU."""
    return "fp16" if device.type == "cuda" else "fp32"

"""CPU pack / unpack / decode at 1 vs 2 torch threads, on a quiet and on a deliberately busy machine.

    python bench/contention.py --label after                      # this checkout
    python bench/contention.py --label before --code /path/to/old/checkout
    python bench/contention.py --label after --busy 2             # with 2 busy-looping processes

Shapes: SmolLM2-135M's MLP (up [1536, 576], down [576, 1536]), PoT 4 and 3 bits, g128. Each op's time is
the median of repeated calls (at least 5, about --seconds each). Results (with the 1-min load average
before and after) are merged into ``bench/results/<cpu>/contention.json`` under ``label/condition/threads``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {"up_1536x576": (1536, 576), "down_576x1536": (576, 1536)}


def median_ms(fn, seconds: float) -> float:
    fn()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="name of this code version, e.g. before / after")
    ap.add_argument("--code", default=None, help="import potkernels from this checkout (default: this one)")
    ap.add_argument("--busy", type=int, default=0, help="busy-looping background processes during the run")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing budget per op")
    ap.add_argument("--out", default=None, help="JSON file (default: bench/results/<cpu>/contention.json)")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(Path(args.code).resolve() if args.code else repo))
    import torch
    import potkernels as pk
    from potkernels.format.packing import pack_codes, unpack_codes
    sys.path.insert(1, str(repo))
    from bench._common import metadata, results_dir

    torch.manual_seed(0)
    cases = []
    for shape_name, (n, k) in SHAPES.items():
        for bits in (4, 3):
            q = pk.quantize_weight(torch.randn(n, k), pk.PoTConfig(bits=bits, group_size=128))
            codes = unpack_codes(q.qweight, "pot", bits, k)
            cases.append((f"{shape_name}_pot{bits}", codes, q))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(2.0 if busy else 0.0)
        load0 = loadavg()
        rows: dict[str, dict[str, float]] = {}
        for t in [int(x) for x in args.threads.split(",")]:
            torch.set_num_threads(t)
            r = rows.setdefault(str(t), {})
            for name, codes, q in cases:
                bits = q.config.bits
                r[f"pack_{name}_ms"] = median_ms(lambda: pack_codes(codes, "pot", bits), args.seconds)
                r[f"unpack_{name}_ms"] = median_ms(lambda: unpack_codes(q.qweight, "pot", bits, q.in_features),
                                                   args.seconds)
                r[f"dequantize_{name}_ms"] = median_ms(lambda: q.dequantize(torch.float16), args.seconds)
            print(f"threads {t}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if "up_1536x576_pot4" in k))
        load1 = loadavg()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    out = Path(args.out) if args.out else results_dir(torch.device("cpu")) / "contention.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    condition = f"busy{args.busy}" if args.busy else "quiet"
    data.setdefault(args.label, {})[condition] = {
        "meta": {**metadata(torch.device("cpu")), "code": args.code or "this checkout", "busy_processes": args.busy,
                 "loadavg_1min_before": load0, "loadavg_1min_after": load1, "cores": os.cpu_count(),
                 "python": sys.version.split()[0]},
        "threads": rows}
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out} [{args.label}][{condition}] (load {load0:.2f} → {load1:.2f})")


if __name__ == "__main__":
    main()

"""Compile the benchmark's Triton kernels in parallel processes before the benchmarks run.

Triton compiles each kernel specialization once per machine and keeps it in its on-disk cache
(~/.triton/cache), shared by processes. The fused kernels unroll 32 decode steps, so a cold
machine spends seconds per (code, regime, config); doing that in a pool of processes turns
minutes of serial compiling into well under one. Same arguments as bench/matmul.py.

    python bench/warmup.py [--jobs 12] [matmul.py arguments...]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import _common  # noqa: F401  (puts the repo on sys.path)


def _task(args) -> tuple[str, float, str]:
    kind, bits, group, shapes, ms, dequant_shapes = args
    t0 = time.time()
    try:
        import torch

        from potkernels.kernels import api
        from potkernels.kernels.decode_bench import decode_reduce
        from matmul import make_packed

        for k, n in shapes:
            _, w = make_packed(kind, bits, torch.randn(n, k, device="cuda"), group)
            for m in ms:
                for dtype in (torch.float16,):
                    api.matmul(torch.randn(m, k, device="cuda", dtype=dtype), w)
        for k, n in dequant_shapes:
            _, w = make_packed(kind, bits, torch.randn(n, k, device="cuda"), group)
            api.dequantize(w, torch.float16)
            decode_reduce(w, torch.randn(k, device="cuda", dtype=torch.float16), 64)
        torch.cuda.synchronize()
        return f"{kind}{bits} M={ms}", time.time() - t0, "ok"
    except Exception as e:  # report, do not stop the others
        return f"{kind}{bits} M={ms}", time.time() - t0, f"{type(e).__name__}: {str(e)[:200]}"


def main() -> None:
    from matmul import M_ALL, SHAPES, ints

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", default="llama8b,square8k,gpt2,smollm2")
    ap.add_argument("--m", default=None)
    ap.add_argument("--pot-bits", default="2,3,4")
    ap.add_argument("--int-bits", default="2,3,4")
    ap.add_argument("--group", type=int, default=128)
    args, _ = ap.parse_known_args()
    shapes = [kn for name in args.shapes.split(",") for kn in SHAPES[name]]
    ms = ints(args.m) if args.m else M_ALL
    if args.quick:
        shapes = [s for s in shapes if s in ((4096, 4096), (576, 1536))]
        ms = [m for m in ms if m in (1, 16, 64, 512)] if not args.m else ms
    codes = [("pot", b) for b in ints(args.pot_bits)] + [("int", b) for b in ints(args.int_bits)]
    # One task per (code, group of M that shares kernels): compiles do not repeat across tasks.
    m_groups = [g for g in ([m for m in ms if m == 1], [m for m in ms if 1 < m <= 16], [m for m in ms if 16 < m <= 64],
                            [m for m in ms if m > 64]) if g]
    tasks = [(kind, bits, args.group, shapes, g, []) for kind, bits in codes for g in m_groups]
    tasks += [(kind, bits, args.group, [], [], [(4096, 4096), (4096, 14336), (8192, 8192)]) for kind, bits in codes]
    t0 = time.time()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for name, dt, status in pool.imap_unordered(_task, tasks):
            print(f"  warm-up {name}: {dt:.1f}s {status}", flush=True)
    print(f"warm-up done: {len(tasks)} tasks in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()

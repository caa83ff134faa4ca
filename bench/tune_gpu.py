"""Tune launch configs on the GPU at hand and write them into a copy of the config table.

    python bench/tune_gpu.py --codes pot4,int4 --m 1,16,64 --out $OUT/configs.json

Times each candidate of potkernels.kernels.tune.candidates with CUDA-graph replays on the
Llama-3-8B layer shapes and stores the best per (regime, code, M bucket, size) under this GPU's
name; commit the resulting table as potkernels/kernels/configs/default.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

os.environ.pop("TRITON_INTERPRET", None)

from potkernels.kernels import configs  # noqa: E402
from potkernels.kernels import api  # noqa: E402
from potkernels.kernels.tune import tune  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--codes", default="pot4,int4")
    ap.add_argument("--m", default="1,16")
    ap.add_argument("--regimes", default=None, help="force regimes (comma list), default: the dispatcher's pick")
    ap.add_argument("--out", default="configs_tuned.json")
    args = ap.parse_args()
    shutil.copy(configs.DEFAULT_TABLE, args.out)
    os.environ["POTKERNELS_CONFIGS"] = args.out
    configs.reload()
    records = []
    for code in args.codes.split(","):
        kind, bits = code[:-1], int(code[-1])
        t0 = time.time()
        recs = tune(kind, bits, [int(m) for m in args.m.split(",")], SHAPES, api.run_regime, api.pick_regime,
                    regimes=args.regimes.split(",") if args.regimes else None)
        for r in recs:
            print(f"{code} M={r['m']:4d} {r['k']}x{r['n']} {r['regime']}: {1e3 * r['ms']:.1f} us  {r['config']}", flush=True)
        print(f"{code}: tuned in {time.time() - t0:.0f} s", flush=True)
        records += recs
    with open(args.out.replace(".json", "_records.json"), "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()

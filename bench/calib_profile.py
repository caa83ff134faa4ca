"""Where a GPTQ calibration's time goes: wall time per phase and per block of ``python -m calibration quantize``.

    python bench/calib_profile.py --blocks 4 --json-out prof.json -- quantize --model smollm2 --bits 3 \
        --group-size 128 --calib ../shared/data/wikitext-2/valid.txt --threads 1

Everything after ``--`` is the calibration CLI's command line. Timers wrap calibration/gptq.py's phases
(Hessian pass, GPTQ solve and its parts, frozen-code refine, packing); times are inclusive (a phase's parts
are counted in it as well). ``--blocks N`` calibrates only the first N transformer blocks (the rest get the
data-free step 1 outside the loop): a profile, not a result. Prints the totals; ``--json-out`` writes
totals, call counts and per-block times.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # as `python -m calibration` does, before any matmul

import calibration.gptq as G  # noqa: E402
import calibration.refine as R  # noqa: E402

PHASES = {  # function in calibration.gptq → phase name
    "_input_groups": "block start (groups of linears)",
    "_accumulate_hessians": "Hessians (+ float targets with refine)",
    "_solve_group": "GPTQ solve (all of it)",
    "make_grid": "  step-1 scales",
    "gptq_quantize": "  GPTQ rounding",
    "fit_scales": "  scale refits (least squares)",
    "OutputError": "  output errors (candidates, report)",
    "fit_gammas": "frozen-code refine",
    "_packed_layer": "packing",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, cli = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=0, help="calibrate only the first N blocks (0: all)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(own)
    if not cli:
        p.error("give the calibration command line after --, e.g. -- quantize --model smollm2")

    totals: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    per_block: list[dict[str, float]] = []

    def timed(name: str, fn):
        def run(*a, **k):
            if name == "_input_groups":  # the first call of every block
                per_block.append(collections.defaultdict(float))
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                totals[PHASES[name]] += dt
                calls[PHASES[name]] += 1
                if per_block:
                    per_block[-1][PHASES[name]] += dt
        return run

    for name in PHASES:
        if name == "OutputError":
            cls = G.OutputError
            G.OutputError = type("OutputError", (cls,), {"__init__": timed(name, cls.__init__),
                                                        "__call__": timed(name, cls.__call__)})
        else:
            setattr(G, name, timed(name, getattr(G, name)))
    find = R.find_blocks

    def first_blocks(model):
        blocks = find(model)
        return type(blocks)(list(blocks)[:args.blocks]) if args.blocks else blocks

    R.find_blocks = first_blocks

    from calibration.cli import main as cli_main

    t0 = time.perf_counter()
    rc = cli_main(cli)
    wall = time.perf_counter() - t0
    out = {"command": cli, "blocks": args.blocks, "wall_s": wall, "loadavg_end": os.getloadavg(),
           "totals_s": dict(totals), "calls": dict(calls), "per_block_s": [dict(b) for b in per_block]}
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{k:42s} {v:8.1f} s  ({calls[k]} calls, {v / max(len(per_block), 1):.2f} s/block)", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())

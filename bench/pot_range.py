"""SQNR of RTN quantization across weight magnitudes (issue 21): PoT 4/3/2 vs int 4/3/2, g128.

For each std in 1e-2 … 1e-7, ``w = torch.randn(256, 512, generator=seed 0) * std`` is quantized with
``quantize_weight`` and decoded with ``.dequantize()`` (fp16, the reference decode); the SQNR is
``sqnr_db(w, ŵ)``. An all-zero ``[4, 512]`` weight is also quantized, and its largest decoded
magnitude recorded (0 means exact zeros). Pure CPU, deterministic, a few seconds.

    python bench/pot_range.py --label after      # merges {label: table} into bench/results/pot_range.json

``--label before`` was run on main (8ca35ad, format v2) before the format-v3 change; the JSON keeps
both, and ``pot_range.md`` renders them side by side.
"""
from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's potkernels, not an installed one

from potkernels.format import FORMAT_VERSION, IntConfig, PoTConfig, quantize_weight, sqnr_db  # noqa: E402

KWARGS = inspect.signature(quantize_weight).parameters  # the v2 'before' code had no warn_sqnr_db
STDS = (1e-2, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6, 1e-7)
CODES = {"PoT4": PoTConfig(4, 128), "PoT3": PoTConfig(3, 128), "PoT2": PoTConfig(2, 128),
         "int4": IntConfig(4, 128), "int3": IntConfig(3, 128), "int2": IntConfig(2, 128)}


def sweep() -> dict:
    """``{"sqnr_db": {code: {std: dB}}, "zero_group_max_abs": {code: float}}``."""
    base = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    def rtn(w, cfg):  # the sweep measures the losses the warning would flag
        return quantize_weight(w, cfg, **({"warn_sqnr_db": None} if "warn_sqnr_db" in KWARGS else {}))

    table = {c: {f"{s:g}": round(sqnr_db(base * s, rtn(base * s, cfg).dequantize()), 2)
                 for s in STDS} for c, cfg in CODES.items()}
    zero = {c: float(rtn(torch.zeros(4, 512), cfg).dequantize().abs().max()) for c, cfg in CODES.items()}
    return {"sqnr_db": table, "zero_group_max_abs": zero}


def render(results: dict) -> str:
    lines = ["# RTN SQNR (dB) vs weight magnitude, g128, `randn(256, 512) * std` (bench/pot_range.py)", ""]
    for label, r in results.items():
        lines += [f"## {label}: format v{r['format_version']}, commit {r['commit']}", "",
                  "| std | " + " | ".join(CODES) + " |", "|---|" + "---|" * len(CODES)]
        for s in STDS:
            lines.append(f"| {s:g} | " + " | ".join(f"{r['sqnr_db'][c][f'{s:g}']:.2f}" for c in CODES) + " |")
        lines += ["", "all-zero group, largest decoded |w|: "
                  + ", ".join(f"{c} {r['zero_group_max_abs'][c]:.3g}" for c in CODES), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", required=True, help="key of this run in the JSON (e.g. before / after)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pot_range.json")
    a = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    results[a.label] = {"format_version": FORMAT_VERSION, "commit": commit, **sweep()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(render(results))
    print(render({a.label: results[a.label]}))


if __name__ == "__main__":
    main()

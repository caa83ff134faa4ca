"""Write the tensor-core and dispatch entries of ``potkernels/kernels/configs/default.json``.

One ``default`` entry per M bucket (any code: the static choice does not depend on it) for the
``dispatch``, ``small_batch`` and ``gemm`` regimes. The values are the static choice from compiling
for sm_90 and the speed model (0 spills, shared memory under the limit; ``bench/sass_report.py``,
``bench/speed_model.py``), **not GPU-tuned**. H100 and H200 have the same SM count and shared memory,
so the static optimum is the same and no per-GPU entry is written (a GPU's entry holds only what
differs from the default: ``bench/tune_gpu.py`` writes measured ones there). Other regimes' entries
(gemv, dequant) are left as they are.

    python bench/static_table.py [--check]   # --check: fail if the file is not up to date
"""
from __future__ import annotations

import argparse
import json
import sys

import _common  # noqa: F401  (repo on sys.path)

from potkernels.kernels import configs

SMALL_BATCH_MAX_M = 512  # swap-AB with the decoded tile in the wgmma operand's registers beats the gemm to M = 512
# The GEMV decodes once for all its x rows, but at M = 2 the speed model puts it behind swap-AB on both compilers
# (PoT4 on the H200, Llama-3-8B layers: 60 µs with triton 3.7.1's code, 86 µs with 3.6.0's, against 44 µs):
# M = 2 goes to small_batch (regime="gemv" takes any M).
GEMV_MAX_M = 1


# (BLOCK_N, num_warps, waves, schedule, maxnreg) per M bucket and size class 'm' / 'l' of the config table: the joint
# best for PoT4 + PoT3 on the Llama-3-8B layers without spills on triton 3.6.0 and 3.7.1 (`python bench/speed_model.py
# grid --m M --by-class --codes pot4,pot3`, H200; waves = programs per SM, launch.split_count; maxnreg caps the
# registers so that many programs fit). Other sizes take the '*' entry: BLOCK_M ≤ 64 one warpgroup, split-K;
# BLOCK_M 128 two warpgroups, stream-K (any shape fills its round).
SMALL_BATCH_BY_CLASS = {2: {"m": (128, 4, 3), "l": (128, 4, 4, "split", 128)},
                        4: {"m": (128, 4, 3), "l": (128, 4, 4, "split", 128)},
                        8: {"m": (128, 4, 2), "l": (128, 4, 2)}, 16: {"m": (64, 4, 3), "l": (128, 4, 2)},
                        32: {"m": (64, 4, 3), "l": (128, 4, 2)}, 64: {"m": (128, 8, 1), "l": (128, 4, 2)},
                        128: {"m": (128, 8, 1, "split")}}


def small_batch_config(bucket: int, size: str = "*") -> dict:
    """Swap-AB: BLOCK_M is the wgmma N side (the batch, at most 128 per program); BLOCK_K 128 puts the decoded
    columns in the MMA operand's order (``k_order`` "frag"); a 3-stage cp.async pipeline. Chosen by
    ``speed_model.py grid`` over the tuner's candidates on the Llama-3-8B layers (H200), 0 spills
    (``sass_report.py``). BLOCK_M ≤ 64: one warpgroup (at 64, 246 registers: two CTAs per SM) except the
    mid-size layers at M = 64, split-K; BLOCK_M 128: two warpgroups of 64 features (one warpgroup spills: 600 B
    at BLOCK_N 128, 232 B at 64), one program per SM, stream-K (the 224 column tiles of gate/up at M = 128
    would otherwise run as 132 + 92)."""
    bm = min(max(16, bucket), 128)
    default = (128, 4, 2, "split", None) if bm <= 64 else (128, 8, 1, "stream", None)
    choice = SMALL_BATCH_BY_CLASS.get(bucket, {}).get(size, default)
    bn, warps, waves, schedule, maxnreg = choice + default[len(choice):]
    cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 128, "num_warps": warps, "num_stages": 3, "waves": waves}
    if maxnreg:
        cfg["maxnreg"] = maxnreg
    return dict(cfg, schedule="stream") if schedule == "stream" else cfg


def gemm_config(bucket: int) -> dict:
    """Two consumer warpgroups; BLOCK_M 256 halves the decode per MMA flop (M > 512: below, small_batch)."""
    return {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 2}


DOC = ("Launch configs per GPU name (torch.cuda.get_device_name), then 'default'. Regime -> key "
       "'<kind><bits>:m<M bucket>:<size s|m|l>' with '*' wildcards, most specific wins. gemv: BLOCK_N columns x "
       "BLOCK_R runs of 32 k per loop step (the warps split K inside a program; 4 columns per thread: one 128-bit "
       "load per word row), decoded once for up to rows_per_program x rows (default 8), num_stages = cp.async "
       "pipeline depth, split-K: the most splits with tiles x splits <= 'waves' x SMs (waves = programs an SM runs "
       "at once); small_batch: BLOCK_M x BLOCK_N outputs per program, BLOCK_K per step, k_order 'frag' (decoded "
       "columns in the MMA operand's order; the default when BLOCK_K is a multiple of 128) or 'natural', schedule "
       "'split' (split-K, the default) or 'stream' (stream-K: waves x SMs programs, each the same share of all "
       "tiles' K steps; 'programs' sets the count); "
       "chosen with bench/speed_model.py (not GPU-tuned). dispatch: M <= gemv_max_m -> gemv, <= small_batch_max_m "
       "-> small_batch (swap-AB tensor cores, split-K or stream-K), else gemm (fused tensor-core GEMM); dequant_mm (dequantize + torch matmul) only if an entry sets dequant_mm_min_m or it is forced. "
       "dispatch/small_batch/gemm entries are written by bench/static_table.py from the sm_90 static report (not "
       "GPU-tuned); potkernels.kernels.tune writes measured ones; hand edits welcome.")


def build(table: dict) -> dict:
    table = json.loads(json.dumps(table))
    table["_doc"] = DOC
    entry = table.setdefault("default", {})
    entry["dispatch"] = {"*:*:*": {"gemv_max_m": GEMV_MAX_M, "small_batch_max_m": SMALL_BATCH_MAX_M}}
    buckets = [b for b in configs.M_BUCKETS if 1 < b <= SMALL_BATCH_MAX_M]
    entry["small_batch"] = {f"*:m{b}:*": small_batch_config(b) for b in buckets}
    for b, by_size in SMALL_BATCH_BY_CLASS.items():
        for size in by_size:
            entry["small_batch"][f"*:m{b}:{size}"] = small_batch_config(b, size=size)
    entry["small_batch"]["*:*:*"] = small_batch_config(16)
    entry["gemm"] = {f"*:m{b}:*": gemm_config(b) for b in configs.M_BUCKETS if b > SMALL_BATCH_MAX_M}
    entry["gemm"]["*:*:*"] = gemm_config(4096)
    for gpu in [g for g in table if g not in ("_doc", "default", "interpreter")]:
        for regime in ("dispatch", "small_batch", "gemm"):  # static choices live in "default" only
            table[gpu].pop(regime, None)
        if not table[gpu]:
            del table[gpu]
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the table is up to date")
    args = ap.parse_args()
    path = configs.DEFAULT_TABLE
    old = json.loads(path.read_text())
    new = build(old)
    if args.check:
        sys.exit(0 if new == old else f"{path} is not what bench/static_table.py writes; rerun it")
    path.write_text(json.dumps(new, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

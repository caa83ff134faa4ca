"""Write the tensor-core and dispatch entries of ``potkernels/kernels/configs/default.json``.

One entry per GPU (``default``, ``NVIDIA H100 80GB HBM3``, ``NVIDIA H200``) × M bucket × code ×
bits for the ``dispatch``, ``small_batch`` and ``gemm`` regimes. The values are the static
choice from compiling for sm_90 (0 spills, shared memory under the limit, decode per weight;
``bench/sass_report.py``), **not GPU-tuned**: H100 and H200 have the same SM count and shared
memory, so the static optimum is the same; ``bench/tune_gpu.py`` overwrites an entry with a
measured one. Other regimes' entries (gemv, dequant) are left as they are.

    python bench/static_table.py [--check]   # --check: fail if the file is not up to date
"""
from __future__ import annotations

import argparse
import json
import sys

import _common  # noqa: F401  (repo on sys.path)

from potkernels.kernels import configs

GPUS = ("default", "NVIDIA H100 80GB HBM3", "NVIDIA H200")
CODES = [("pot", 2), ("pot", 3), ("pot", 4), ("int", 2), ("int", 3), ("int", 4), ("int", 8)]
SMALL_BATCH_MAX_M = 128  # swap-AB + split-K keeps all SMs busy where M/BLOCK_M · N/BLOCK_N tiles are few


def small_batch_config(bucket: int) -> dict:
    """Swap-AB: BLOCK_M is the wgmma N side (the batch); 128 output features per program."""
    bm = max(16, bucket)
    if bm <= 32:  # one warpgroup, 3-stage cp.async pipeline of the packed words
        return {"BLOCK_M": bm, "BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3, "waves": 2}
    # BLOCK_M 64/128: two warpgroups (64 features each) keep the accumulator + decode in registers
    return {"BLOCK_M": bm, "BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 8, "num_stages": 3 if bm == 64 else 2,
            "waves": 2 if bm == 64 else 1}


def gemm_config(bucket: int) -> dict:
    """Two consumer warpgroups; BLOCK_M 256 halves the decode per MMA flop once M fills the GPU."""
    if bucket <= 512:
        return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 2}


DOC = ("Launch configs per GPU name (torch.cuda.get_device_name), then 'default'. Regime -> key "
       "'<kind><bits>:m<M bucket>:<size s|m|l>' with '*' wildcards, most specific wins. gemv: BLOCK_N columns per "
       "program (4 per thread at 128 threads: one 128-bit load per word row), split-K until tiles x splits covers "
       "'waves' x SMs. The H100 gemv entry is the v2 default, not re-tuned since format v2. dispatch: M <= gemv_max_m "
       "-> gemv, <= small_batch_max_m -> small_batch (swap-AB tensor cores, split-K), else gemm (fused tensor-core "
       "GEMM); dequant_mm (dequantize + torch matmul) only if an entry sets dequant_mm_min_m or it is forced. "
       "dispatch/small_batch/gemm entries are written by bench/static_table.py from the sm_90 static report (not "
       "GPU-tuned); potkernels.kernels.tune writes measured ones; hand edits welcome.")


def build(table: dict) -> dict:
    table = json.loads(json.dumps(table))
    table["_doc"] = DOC
    for gpu in GPUS:
        entry = table.setdefault(gpu, {})
        entry["dispatch"], entry["small_batch"], entry["gemm"] = {}, {}, {}
        for kind, bits in CODES:
            for bucket in configs.M_BUCKETS:
                key = f"{kind}{bits}:m{bucket}:*"
                entry["dispatch"][key] = {"gemv_max_m": 1, "small_batch_max_m": SMALL_BATCH_MAX_M}
                if bucket == 1:
                    continue
                if bucket <= SMALL_BATCH_MAX_M:
                    entry["small_batch"][key] = small_batch_config(bucket)
                else:
                    entry["gemm"][key] = gemm_config(bucket)
        # wildcards for anything else (e.g. a code added later)
        entry["dispatch"]["*:*:*"] = {"gemv_max_m": 1, "small_batch_max_m": SMALL_BATCH_MAX_M}
        entry["small_batch"]["*:*:*"] = small_batch_config(16)
        entry["gemm"]["*:*:*"] = gemm_config(4096)
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

"""Compile the kernels for a GPU architecture offline (no GPU needed) and report resources.

For every regime × code × activation dtype, with the launch config the table gives for the
named GPU, this compiles to a cubin with Triton's bundled ptxas and reports shared memory,
spills (local loads/stores in the SASS) and the SASS instruction mix per decoded weight —
the integer/ALU work that decides whether decode keeps up with HBM. Fails on a compile error
or on shared memory above the architecture's limit.

    python bench/aot_check.py [--gpu "NVIDIA H100 80GB HBM3"] [--arch 90] [--quick]
"""
from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ["TRITON_INTERPRET"] = "0"

import _common  # noqa: F401,E402  (repo on sys.path)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from potkernels.kernels import configs  # noqa: E402
from potkernels.kernels.dequant import dequant_kernel  # noqa: E402
from potkernels.kernels.gemm import gemm_kernel  # noqa: E402
from potkernels.kernels.gemv import gemv_kernel  # noqa: E402
from potkernels.kernels.small_batch import small_batch_kernel  # noqa: E402

SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
DIV16 = {"N", "K", "KP", "G", "stride_xm"}
ALU = ("LOP3", "SHF", "IADD3", "SGXT", "PRMT", "SEL", "ISETP", "LEA", "VIADD", "BMSK")


def compile_for(fn, consts: dict, act: str, arch: int, warps: int, stages: int):
    names = list(inspect.signature(fn.fn).parameters)
    ptr = {"x_ptr": act, "q_ptr": "i32", "sg_ptr": "i32", "sc_ptr": "fp16", "z_ptr": "u8", "b_ptr": "fp16",
           "y_ptr": act, "part_ptr": "fp32", "out_ptr": "fp16", "cnt_ptr": "i32"}
    sig = {n: "constexpr" if n in consts else (f"*{ptr[n]}" if n in ptr else "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in consts and (n in ptr or n in DIV16)}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})


def sass_mix(kernel) -> collections.Counter:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
    mix = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        if m:
            mix[m.group(1)] += 1
    return mix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", default="NVIDIA H100 80GB HBM3", help="config table entry to check")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--quick", action="store_true", help="4-bit PoT and int only, fp16 only")
    args = ap.parse_args()
    codes = [("pot", 4, 2, 1), ("int", 4, 4, 0)] if args.quick else \
        [("pot", 2, 1, 0), ("pot", 3, 2, 0), ("pot", 4, 2, 1), ("int", 2, 2, 0), ("int", 3, 2, 1), ("int", 4, 4, 0),
         ("int", 8, 8, 0)]
    acts = [("fp16", False)] if args.quick else [("fp16", False), ("bf16", True)]
    # (regime, M for the table lookup): one per table bucket that the dispatcher uses.
    cases = [("gemv", 1), ("small_batch", 16), ("small_batch", 64), ("gemm", 256), ("dequant", 1)]
    n, k = 4096, 4096
    bad = 0
    print(f"{'regime':12s} {'M':>4s} {'code':5s} {'act':4s} {'smem':>7s} {'spill':>5s} {'w/thr':>6s} "
          f"{'ALU/w':>6s} {'IMAD/w':>6s} {'all/w':>6s} {'s':>5s}")
    for regime, m in cases:
        for kind, bits, w0, w1 in codes:
            for act, is_bf16 in acts:
                cfg = configs.lookup(regime, kind, bits, m, n, k, device=args.gpu)
                base = dict(IS_POT=kind == "pot", W0=w0, W1=w1, IS_BF16=is_bf16)
                warps, stages = int(cfg.get("num_warps", 4)), int(cfg.get("num_stages", 2))
                if regime == "gemv":
                    fn, consts = gemv_kernel, dict(base, HAS_BIAS=False, SPLIT=True, FUSED_REDUCE=True, EVEN_K=True,
                                                   BLOCK_R=cfg["BLOCK_R"], BLOCK_N=cfg["BLOCK_N"])
                    per_thread = 32 * cfg["BLOCK_R"] * cfg["BLOCK_N"] / (32 * warps)
                elif regime == "dequant":
                    fn, consts = dequant_kernel, dict(base, EXPAND=cfg.get("LOADER", "expand") == "expand",
                                                      SCALE_PER_TILE=True, BLOCK_K=cfg["BLOCK_K"],
                                                      BLOCK_N=cfg["BLOCK_N"])
                    per_thread = cfg["BLOCK_K"] * cfg["BLOCK_N"] / (32 * warps)
                else:
                    extra = dict(SPLIT=True, FUSED_REDUCE=True) if regime == "small_batch" else dict(GROUP_M=cfg.get("GROUP_M", 8))
                    fn = small_batch_kernel if regime == "small_batch" else gemm_kernel
                    consts = dict(base, HAS_BIAS=False, SCALE_FREE=cfg.get("scale", "acc" if regime == "small_batch"
                                                                            else "weight") == "acc",
                                  DOT_F32=False, JOIN_TREE=True, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                  BLOCK_K=cfg["BLOCK_K"], **extra)
                    per_thread = cfg["BLOCK_K"] * cfg["BLOCK_N"] / (32 * warps)
                t0 = time.time()
                try:
                    kern = compile_for(fn, consts, "bf16" if is_bf16 else "fp16", args.arch, warps, stages)
                except Exception as e:
                    bad += 1
                    print(f"{regime:12s} {m:4d} {kind}{bits:<2d} {act:4s} COMPILE ERROR {type(e).__name__}: {str(e)[:300]}")
                    continue
                mix = sass_mix(kern)
                smem = kern.metadata.shared
                spill = mix["STL"] + mix["LDL"]
                over = smem > SMEM_LIMIT.get(args.arch, 232448)
                bad += over
                alu = sum(mix[o] for o in ALU)
                print(f"{regime:12s} {m:4d} {kind}{bits:<2d} {act:4s} {smem:7d} {spill:5d} {per_thread:6.0f} "
                      f"{alu / per_thread:6.2f} {mix['IMAD'] / per_thread:6.2f} {sum(mix.values()) / per_thread:6.2f} "
                      f"{time.time() - t0:5.1f}{'  SMEM OVER LIMIT' if over else ''}", flush=True)
    print("per-thread counts are static SASS instructions of one loop body over the weights one thread decodes "
          "per K step (gemv: per row block)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

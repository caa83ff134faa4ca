"""Static speed report, no GPU needed: compile every kernel for sm_90 and read its SASS.

For each registered kernel spec × {pot, int} × bits {2, 3, 4} (g128, fp16 activations) this
compiles with Triton's own compiler and bundled ptxas, with the launch config the dispatcher
would pick on an H100/H200 (the config table's ``--gpu`` entry) for the large Llama-3-8B layers (and for the
mid-size ones where that config compiles to another kernel), disassembles the cubin and
counts the **steady-state loop**: the longest loop body of the SASS (backward branch), i.e. the
K loop. Each record of ``DIR/report.json`` (a JSON list) holds:

    kernel, kind, bits, group_size, M, size_class, config, instr_per_weight (all SASS instructions of the loop
    body / weights one thread handles per iteration), pipes (per-pipe instructions per weight),
    opcodes (per-opcode counts per weight), registers, spill_bytes, smem_bytes, ldg_bits (widest
    global load in the loop), weights_per_iter (per thread), sync_ldg_in_loop (global loads whose value the
    same iteration reads), prefetch_ldg_in_loop, ldg_stalled_lone_warp (the loads one warp alone would stall on
    by the speed model's latency chain), and for the matmul regimes the speed
    model's prediction (``bench/speed_model.py``: latency chain, issue, shared memory, occupancy,
    waves, split-K tail, launch; validated on the v1 H100 run, ``sm90-static/validation.json``):
    model_us (the dispatcher's choice at that M, summed over the Llama-3-8B layer shapes
    ``speed_model.LLAMA3_8B``), model_fp16_us, model_speedup_vs_fp16, model_bound. Predictions, not
    measurements.

    python bench/sass_report.py --out bench/results/sm90-static/after [--kernels gemv,dequant]

**Adding a kernel**: append a :class:`KernelSpec` to ``SPECS`` (or call :func:`register` from
another module before :func:`main`): a name, the config-table regime and M, and a ``build``
function ``(kind, bits, group_size, cfg) -> Build`` that returns the jit function, its constexpr
values, the pointer dtypes and the weights one thread decodes per loop iteration.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

os.environ["TRITON_INTERPRET"] = "0"

import _common  # noqa: F401,E402  (repo on sys.path)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from potkernels.kernels import configs  # noqa: E402

SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
# Integer args known to be multiples of 16 at the real shapes (Triton specializes on this).
DIV16 = {"N", "K", "KP", "G", "stride_xm", "MN", "k_per_split"}  # k_per_split: a multiple of BLOCK_K
# (K, N) of the config lookup per size class: the large Llama-3-8B layers (gate/up, down: class "l") and the mid-size
# ones (qkv, o: "m"); a kernel is reported for "m" only where that config compiles to another kernel
COMPILE_SHAPES = {"l": (4096, 14336), "m": (4096, 4096)}
MODEL_GPU = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H200": "h200"}  # config table entry -> speed_model GPU

PIPES = {
    "alu": ("LOP3", "SHF", "IADD3", "ISETP", "SEL", "PRMT", "LEA", "BMSK", "SGXT", "VIADD", "IABS", "IMNMX",
            "FLO", "POPC", "BREV", "LOP", "IADD", "SHL", "SHR", "PLOP3", "P2R", "R2P", "FSEL", "FSETP", "FMNMX",
            "CSET", "CSETP", "VIMNMX", "HSETP2", "HMNMX2"),
    "fma": ("FFMA", "FADD", "FMUL", "IMAD", "IMUL", "HFMA2", "HADD2", "HMUL2", "FMUL2", "FFMA2", "IDP", "DFMA"),
    "conv": ("F2F", "F2FP", "I2F", "F2I", "FRND", "I2FP", "F2IP", "MUFU"),
    "mem": ("LDG", "STG", "LDS", "STS", "LDSM", "LDGSTS", "ATOM", "ATOMG", "RED", "LD", "ST", "LDL", "STL", "ATOMS",
            "LDC", "ULDC", "LDGDEPBAR", "SYNCS", "UBLKCP", "UTMALDG"),
    "tensor": ("HMMA", "HGMMA", "IMMA", "WARPGROUP", "QGMMA"),
    "move": ("MOV", "MOV32I", "S2R", "CS2R", "S2UR", "SHFL", "R2UR", "UMOV", "UIADD3", "ULOP3", "USHF", "UIMAD",
             "ULEA", "USEL", "UISETP", "VOTEU", "VOTE", "UPRMT"),
}
OPCODE_PIPE = {op: pipe for pipe, ops in PIPES.items() for op in ops}  # anything else: "control"


@dataclasses.dataclass
class Build:
    """What one compile needs. ``ptr_types`` maps pointer parameter names to Triton dtypes
    (``"fp16"``, ``"i32"`` ...); every other non-constexpr parameter is an i32."""

    fn: Any
    constexprs: dict[str, Any]
    ptr_types: dict[str, str]
    weights_per_iter: float  # weights one thread decodes per iteration of the steady-state loop
    num_warps: int
    num_stages: int
    maxnreg: int | None = None  # register cap per thread (more CTAs per SM), as the launch passes it


@dataclasses.dataclass
class KernelSpec:
    name: str  # report name: gemv, small_batch, gemm, dequant, decode_bound, ...
    regime: str  # config table regime for the lookup
    M: int  # batch rows the dispatcher sees (selects the config bucket)
    build: Callable[[str, int, int, dict[str, Any]], Build]
    kinds: tuple[str, ...] = ("pot", "int")
    bits: tuple[int, ...] = (2, 3, 4)


SPECS: list[KernelSpec] = []


def register(spec: KernelSpec) -> KernelSpec:
    SPECS.append(spec)
    return spec


# ------------------------------------------------------------------ today's kernels
def _warps(cfg):
    return int(cfg.get("num_warps", 4)), int(cfg.get("num_stages", 2))


def _code(kind: str, bits: int) -> dict[str, Any]:
    """Constexprs that select the code in every kernel of this package (v2 layout)."""
    from potkernels.format.layout import layout

    lay = layout(kind, bits)
    return dict(IS_POT=kind == "pot", BITS=bits, UNIT_WORDS=lay.unit_words, UNIT_CODES=lay.unit_codes)


def _only_params(fn, consts: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(fn.fn).parameters
    return {k: v for k, v in consts.items() if k in params}


def _kernel_specs() -> None:
    """Register the package's kernels (imports are local so another spec list can be used alone)."""

    def build_gemv(kind, bits, g, cfg):
        from potkernels.kernels.gemv import gemv_kernel, left_pairs

        w, s = _warps(cfg)
        consts = dict(_code(kind, bits), IS_BF16=False, X_F16=True, HAS_BIAS=False, SPLIT=True, FUSED_REDUCE=True,
                      EVEN_K=True, FULL_TILES=True,  # the Llama-3-8B layers' shapes (whole column blocks and steps)
                      USE_ASM=True, GROUP_RUNS=g // 32, NUM_STAGES=s, LEFT_PAIRS=left_pairs(kind, bits),
                      **dict({"BLOCK_R": 1, "BLOCK_M": 1}, **{k: v for k, v in cfg.items() if k.isupper()}))
        # steady-state loop: BLOCK_R runs of 32 k per iteration
        wpi = 32 * cfg.get("BLOCK_R", 1) * cfg["BLOCK_N"] / (32 * w)
        return Build(gemv_kernel, _only_params(gemv_kernel, consts), {"x_ptr": "fp16", "y_ptr": "fp16"}, wpi, w, s)

    def build_dequant(kind, bits, g, cfg):
        from potkernels.kernels.dequant import dequant_kernel

        w, s = _warps(cfg)
        consts = dict(_code(kind, bits), W0=0, W1=0, IS_BF16=False, EXPAND=cfg.get("LOADER", "expand") == "expand",
                      SCALE_PER_TILE=True, BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"])
        return Build(dequant_kernel, _only_params(dequant_kernel, consts), {"out_ptr": "fp16"},
                     cfg["BLOCK_K"] * cfg["BLOCK_N"] / (32 * w), w, s)

    def build_dot(kernel_name):
        def build(kind, bits, g, cfg):
            from potkernels.kernels import gemm, small_batch
            from potkernels.kernels.launch import frag_k

            fn = small_batch.small_batch_kernel if kernel_name == "small_batch" else gemm.gemm_kernel
            w, s = _warps(cfg)
            bk = cfg["BLOCK_K"]
            scale = cfg.get("scale", "acc" if kernel_name == "small_batch" else "weight")
            consts = dict(_code(kind, bits), IS_BF16=False, HAS_BIAS=False, SPLIT=True, FUSED_REDUCE=True,
                          STREAM=cfg.get("schedule", "split") == "stream",
                          SCALE_FREE=scale == "acc" and g % bk == 0, DOT_F32=False, JOIN_TREE=True, USE_ASM=True,
                          GROUP_RUNS=g // 32, WORD_LOADS=True,  # N even at every real shape
                          FRAG_K=frag_k(cfg, bk), EVEN_K=True,
                          REDUCE_CHUNK=small_batch.reduce_chunk(cfg["BLOCK_M"], cfg["BLOCK_N"], w),
                          BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 8))
            ptrs = {"x_ptr": "fp16", "y_ptr": "fp16", "sc_ptr": "fp16" if kind == "pot" else "i32"}  # Packed.tile_scales
            return Build(fn, _only_params(fn, consts), ptrs, bk * cfg["BLOCK_N"] / (32 * w), w, s, cfg.get("maxnreg"))
        return build

    def build_decode_bound(kind, bits, g, cfg):
        from potkernels.kernels import decode_bench
        from potkernels.kernels.gemv import left_pairs

        dc = dict(decode_bench.DEFAULT_CONFIG)
        w = int(dc["num_warps"])
        consts = dict(_code(kind, bits), USE_ASM=True, LEFT_PAIRS=left_pairs(kind, bits),
                      **{k: v for k, v in dc.items() if k.isupper()})
        fn = decode_bench.decode_reduce_kernel
        return Build(fn, _only_params(fn, consts), {"x_ptr": "fp16"}, decode_bench.weights_per_iter(kind, bits, dc), w, 1)

    register(KernelSpec("gemv", "gemv", 1, build_gemv))
    # the tensor-core regimes at the M the targets name (the dispatcher's regime at each)
    for m in (2, 16, 64, 128, 256):
        register(KernelSpec("small_batch", "small_batch", m, build_dot("small_batch")))
    register(KernelSpec("gemm", "gemm", 2048, build_dot("gemm")))
    register(KernelSpec("dequant", "dequant", 1, build_dequant))
    register(KernelSpec("decode_bound", "gemv", 1, build_decode_bound))


# ------------------------------------------------------------------ compile + SASS
DEFAULT_PTR = {"x_ptr": "fp16", "q_ptr": "i32", "sg_ptr": "i32", "lut_ptr": "i32", "sc_ptr": "fp16", "z_ptr": "u8", "b_ptr": "fp16",
               "y_ptr": "fp16", "part_ptr": "fp32", "out_ptr": "fp16", "cnt_ptr": "i32"}


def compile_build(b: Build, arch: int):
    names = list(inspect.signature(b.fn.fn).parameters)
    ptr = dict(DEFAULT_PTR, **b.ptr_types)
    sig = {n: "constexpr" if n in b.constexprs else (f"*{ptr[n]}" if n.endswith("_ptr") else "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in b.constexprs and (n.endswith("_ptr") or n in DIV16)}
    src = ASTSource(fn=b.fn, signature=sig, constexprs={(names.index(k),): v for k, v in b.constexprs.items()},
                    attrs=attrs)
    opts = {"num_warps": b.num_warps, "num_stages": b.num_stages}
    if b.maxnreg:
        opts["maxnreg"] = b.maxnreg
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z0-9_]+)((?:\.[A-Za-z0-9_]+)*)\s*([^;]*);")


def disassemble(cubin: bytes) -> list[tuple[int, str, str, str]]:
    """[(address, opcode, modifiers, operands)] of the SASS."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append((int(m.group(1), 16), m.group(3), m.group(4), m.group(5)))
    return out


def resources(cubin: bytes) -> dict[str, int]:
    """Registers, stack (local memory: spills) and shared memory from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
    res = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", text)
        res[key] = int(m.group(1)) if m else 0
    return res


def steady_loop(sass):
    """Instructions of the steady-state loop: the longest *innermost* loop body (a branch back to
    a lower address whose range holds no other backward branch) among those holding an MMA if any
    loop does (a split-K tail loop can be the longer one: triton 3.6 once unrolled it to 700
    instructions); the whole kernel if there is no loop.
    Per-group work outside it (scale loads, zero-point constants) is excluded: it is amortized
    over ``G / 32`` runs (the report states ``outer_loop_instructions`` too)."""
    addr_index = {a: i for i, (a, *_rest) in enumerate(sass)}
    loops = []
    for i, (a, op, mods, operands) in enumerate(sass):
        if op != "BRA":
            continue
        m = re.search(r"0x([0-9a-f]+)", operands)
        if m and int(m.group(1), 16) < a and int(m.group(1), 16) in addr_index:
            loops.append((addr_index[int(m.group(1), 16)], i))
    inner = [(lo, hi) for lo, hi in loops if not any(lo <= lo2 and hi2 <= hi and (lo2, hi2) != (lo, hi)
                                                     for lo2, hi2 in loops)]
    if not inner:
        return [s for s in sass if s[1] not in ("NOP",)], False, 0
    with_mma = [(lo, hi) for lo, hi in inner if any(sass[i][1] in ("HGMMA", "HMMA") for i in range(lo, hi + 1))]
    lo, hi = max(with_mma or inner, key=lambda r: r[1] - r[0])
    outer = [(l2, h2) for l2, h2 in loops if l2 <= lo and hi <= h2 and (l2, h2) != (lo, hi)]
    outer_len = min((h2 - l2 + 1 for l2, h2 in outer), default=0)
    return sass[lo: hi + 1], True, outer_len


REGISTER = re.compile(r"\bR(\d+)\b")  # a general register operand of a SASS line
# opcodes whose first register operand is read, not written (stores, barriers, branches, MMA fences ...)
NO_DEST_OPS = ("STS", "STG", "ST", "STL", "RED", "LDGSTS", "BAR", "BRA", "DEPBAR", "LDGDEPBAR", "WARPGROUP",
               "MEMBAR", "EXIT", "SYNCS", "ARRIVES", "UTMALDG", "UBLKCP", "NOP", "WARPSYNC", "FENCE")


def waited_loads(body) -> list[str]:
    """``LDG`` instructions of a loop body whose destination is read later in the same iteration."""
    out = []
    for i, (_, op, mods, operands) in enumerate(body):
        regs = [int(r) for r in REGISTER.findall(operands)]
        if op != "LDG" or not regs:
            continue
        dest = set(range(regs[0], regs[0] + max(1, ldg_width(mods) // 32)))
        for _, op2, _, operands2 in body[i + 1:]:
            regs2 = [int(r) for r in REGISTER.findall(operands2)]
            writes = op2 not in NO_DEST_OPS and regs2
            srcs = set(regs2[1:] if writes else regs2)
            if dest & srcs:
                out.append(f"{op}{mods}")
                break
            if writes and regs2[0] in dest:
                dest.discard(regs2[0])
                if not dest:
                    break
    return out


def ldg_width(mods: str) -> int:
    for w in (128, 64):
        if f".{w}" in mods:
            return w
    if ".U16" in mods or ".S16" in mods:
        return 16
    if ".U8" in mods or ".S8" in mods:
        return 8
    return 32


def model_prediction(spec: KernelSpec, kind: str, bits: int, gpu: str) -> dict[str, Any]:
    """The speed model's numbers for this kernel's regime at ``spec.M`` (empty when the dispatcher
    picks another regime there, for the non-matmul kernels, or before ``speed_model validate`` ran)."""
    import speed_model  # the model builds on this module: imported late

    key = MODEL_GPU.get(gpu)
    if key is None or spec.name not in ("gemv", "small_batch", "gemm") or \
            not (speed_model.STATIC_DIR / "validation.json").exists():
        return {}
    row = speed_model.predictions(key, speed_model.fitted_params(), [spec.M], [(kind, bits)])[0]
    if row["regime"] != spec.regime:
        return {}
    return {"model_us": row["us"], "model_fp16_us": row["fp16_us"], "model_speedup_vs_fp16": row["speedup"],
            "model_bound": row["bound"]}


def stalled_loads(body, gpu: str) -> Optional[list[str]]:
    """The loop's global loads one in-order warp stalls on, by the speed model's latency chain with its fitted
    latencies (``speed_model.simulate_chain``; ``None`` before ``speed_model validate`` ran)."""
    import speed_model  # the model builds on this module: imported late

    key = MODEL_GPU.get(gpu)
    if key is None or not (speed_model.STATIC_DIR / "validation.json").exists():
        return None
    p, clk = speed_model.fitted_params(), speed_model.GPUS[key]["clock_hz"]
    return speed_model.simulate_chain(body, p.dram_latency_ns * 1e-9 * clk, p.cache_latency_ns * 1e-9 * clk)[1]


def spec_build(spec: KernelSpec, kind: str, bits: int, group: int, gpu: str, size: str = "l"):
    """(config, Build) of a kernel for the dispatcher's config at ``spec.M`` and size class ``size``."""
    k, n = COMPILE_SHAPES[size]
    cfg = configs.lookup(spec.regime, kind, bits, spec.M, n, k, device=gpu)
    return cfg, spec.build(kind, bits, group, cfg)


def run_spec(spec: KernelSpec, kind: str, bits: int, group: int, gpu: str, arch: int, size: str = "l") -> dict:
    cfg, b = spec_build(spec, kind, bits, group, gpu, size)
    t0 = time.time()
    kern = compile_build(b, arch)
    sass = disassemble(kern.asm["cubin"])
    res = resources(kern.asm["cubin"])
    body, is_loop, outer_len = steady_loop(sass)
    ops = collections.Counter(op for _, op, _, _ in body)
    wpi = b.weights_per_iter
    pipes = collections.Counter()
    for op, c in ops.items():
        pipes[OPCODE_PIPE.get(op, "control")] += c
    ldg = [ldg_width(mods) for _, op, mods, _ in body if op == "LDG"] or \
          [ldg_width(mods) for _, op, mods, _ in sass if op == "LDG"]
    spill_ops = sum(1 for _, op, _, _ in sass if op in ("STL", "LDL"))
    # shared-memory stores in the loop, in fp16 elements per weight (1.0 = every decoded weight once)
    sts_bytes = sum(ldg_width(mods) // 8 for _, op, mods, _ in body if op == "STS")
    mma_ops = sorted({op + mods for _, op, mods, _ in sass if op in ("HGMMA", "HMMA")})
    waited = waited_loads(body)
    stalled = stalled_loads(body, gpu)
    rec = {
        "kernel": spec.name, "kind": kind, "bits": bits, "group_size": group, "M": spec.M, "size_class": size,
        "config": {kk: v for kk, v in cfg.items()},
        "instr_per_weight": round(len(body) / wpi, 3),
        "pipes": {p: round(c / wpi, 3) for p, c in sorted(pipes.items())},
        "opcodes": {o: round(c / wpi, 3) for o, c in ops.most_common()},
        "registers": res["REG"], "spill_bytes": res["STACK"] + res["LOCAL"], "spill_instructions": spill_ops,
        "smem_bytes": kern.metadata.shared, "ldg_bits": max(ldg) if ldg else 0,
        "weights_per_iter": wpi, "steady_loop_found": is_loop, "loop_instructions": len(body),
        "outer_loop_instructions": outer_len,
        "smem_store_instr_per_weight": round(sum(1 for _, op, _, _ in body if op == "STS") / wpi, 3),
        "smem_stores_per_weight": round(sts_bytes / 2 / wpi, 3), "wgmma": any(o.startswith("HGMMA") for o in mma_ops),
        "mma_opcodes": mma_ops,
        # global loads in the steady loop that the same iteration waits on (cp.async LDGSTS is not one;
        # a load whose value is first read in the next iteration is a prefetch)
        "sync_ldg_in_loop": waited,
        "prefetch_ldg_in_loop": sum(op == "LDG" for _, op, _, _ in body) - len(waited),
        # ... and the ones one warp alone, in order, would stall on by the speed model's latency chain (read
        # before they land: a load waited on at a step's end may not stall; a prefetch read early may)
        "ldg_stalled_lone_warp": stalled,
        "compile_s": round(time.time() - t0, 1),
    }
    rec["smem_over_limit"] = kern.metadata.shared > SMEM_LIMIT.get(arch, 232448)
    rec.update(model_prediction(spec, kind, bits, gpu))
    return rec


def _lone_warp(r: dict) -> str:
    """``, N s`` suffix: the loop's loads one warp alone would stall on (see write_markdown)."""
    n = len(r.get("ldg_stalled_lone_warp") or [])
    return f", {n} s" if n else ""


def write_markdown(records: list[dict], path: Path, meta: dict) -> None:
    val = meta.get("validation") or {}
    err = (f"validated on the v1 H100 run: median |error| {100 * val['median_rel_err']:.0f} %, max "
           f"{100 * val['max_rel_err']:.0f} % over {val['cases']} cases" if val else "model not fitted yet")
    lines = [f"# Static SASS report ({meta['arch']}, config table entry \"{meta['gpu']}\")", "",
             f"triton {meta['triton']}, compiled {meta['date']}. Steady-state loop body, per weight one thread "
             "handles; all SASS instructions. model µs / × fp16: `bench/speed_model.py` for the dispatcher's choice "
             f"at that M, summed over the Llama-3-8B layer shapes {{qkv, o, gate/up, down}} ({err}) — "
             "predictions, not measurements. Loads waited on: global loads of the steady loop whose value the same "
             "iteration reads (in brackets the prefetched ones, first read in the next iteration; `s`: of all "
             "of them, those one warp alone would stall on by the model's latency chain, `speed_model.simulate_chain`). "
             "Configs of the large layers (gate/up, down); `·m`: the mid-size layers' (qkv, o) where that is another "
             "kernel.",
             "",
             "| kernel | code | M | instr/w | alu/w | fma/w | mem/w | conv/w | regs | spill B | smem B | ldg bits | "
             "top opcodes /w | wgmma | smem stores/w | loads waited on in the loop (prefetched) | model µs | model bound | "
             "model × fp16 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['kind']}{r['bits']} | {r['M']} | COMPILE ERROR: "
                         f"{r['error'][:120]} |||||||||||||||")
            continue
        p = r["pipes"]
        top = ", ".join(f"{o} {c:.2f}" for o, c in list(r["opcodes"].items())[:5])
        model = (f"{r['model_us']:.1f} | {r['model_bound']} | {r['model_speedup_vs_fp16']:.2f}" if "model_us" in r
                 else "– | – | –")
        label = r["kernel"] + (" ·m" if r.get("size_class") == "m" else "")
        lines.append(f"| {label} | {r['kind']}{r['bits']} | {r['M']} | {r['instr_per_weight']:.2f} | "
                     f"{p.get('alu', 0):.2f} | {p.get('fma', 0):.2f} | {p.get('mem', 0):.2f} | {p.get('conv', 0):.2f} | "
                     f"{r['registers']} | {r['spill_bytes']} | {r['smem_bytes']} | {r['ldg_bits']} | "
                     f"{top} | {'yes' if r.get('wgmma') else 'no'} | {r.get('smem_stores_per_weight', 0):.2f} | "
                     f"{', '.join(r.get('sync_ldg_in_loop', [])) or 'none'} ({r.get('prefetch_ldg_in_loop', 0)}"
                     f"{_lone_warp(r)}) | {model} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="directory for report.json and report.md")
    ap.add_argument("--gpu", default="NVIDIA H100 80GB HBM3", help="config table entry (dispatcher's choice)")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--kernels", default=None, help="comma-separated subset of kernel names")
    ap.add_argument("--kinds", default="pot,int")
    ap.add_argument("--bits", default="2,3,4")
    args = ap.parse_args(argv)
    if not SPECS:
        _kernel_specs()
    names = args.kernels.split(",") if args.kernels else [s.name for s in SPECS]
    unknown = set(names) - {s.name for s in SPECS}
    if unknown:
        ap.error(f"unknown kernels {sorted(unknown)}; known: {[s.name for s in SPECS]}")
    args.out.mkdir(parents=True, exist_ok=True)
    kinds, bitss = args.kinds.split(","), [int(b) for b in args.bits.split(",")]
    records, bad = [], 0
    for spec in SPECS:
        if spec.name not in names:
            continue
        for kind, bits, size in itertools.product(spec.kinds, spec.bits, COMPILE_SHAPES):
            if kind not in kinds or bits not in bitss:
                continue
            if size != "l":  # only where the mid-size layers' config compiles to another kernel
                builds = [spec_build(spec, kind, bits, args.group, args.gpu, sz)[1] for sz in ("l", size)]
                if len({(tuple(sorted(b.constexprs.items())), b.num_warps, b.num_stages, b.maxnreg)
                        for b in builds}) == 1:
                    continue
            try:
                rec = run_spec(spec, kind, bits, args.group, args.gpu, args.arch, size)
            except Exception as e:  # keep going: a compile error is a finding of the report
                bad += 1
                rec = {"kernel": spec.name, "kind": kind, "bits": bits, "group_size": args.group, "M": spec.M,
                       "error": f"{type(e).__name__}: {str(e)[:2000]}"}
                print(f"{spec.name:13s} {kind}{bits} COMPILE ERROR {rec['error'][:300]}", flush=True)
            else:
                bad += rec["smem_over_limit"] + (rec["spill_bytes"] > 0)
                p = rec["pipes"]
                print(f"{spec.name:13s} {kind}{bits} M={spec.M:<4d} {size} {rec['instr_per_weight']:6.2f} instr/w "
                      f"(alu {p.get('alu', 0):.2f} fma {p.get('fma', 0):.2f} mem {p.get('mem', 0):.2f}) "
                      f"regs {rec['registers']:3d} spill {rec['spill_bytes']} smem {rec['smem_bytes']} "
                      f"ldg {rec['ldg_bits']} model {rec.get('model_us', '–')} us "
                      f"({rec.get('model_bound', '–')}) "
                      f"[{rec['compile_s']} s]", flush=True)
            records.append(rec)
    val_path = Path(__file__).resolve().parent / "results" / "sm90-static" / "validation.json"
    meta = {"arch": f"sm_{args.arch}", "gpu": args.gpu, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "validation": json.loads(val_path.read_text()) if val_path.exists() else None}
    (args.out / "report.json").write_text(json.dumps(records, indent=1) + "\n")
    write_markdown(records, args.out / "report.md", meta)
    print(f"wrote {args.out / 'report.json'} and report.md ({len(records)} kernels, {bad} with errors/spills/smem)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Offline timing model of one kernel launch from its compiled sm_90 SASS (no GPU needed).

Each kernel is compiled with Triton's own compiler for sm_90 (``sass_report.compile_build``, cached
under ``bench/.cache/speed_model``) and its **steady-state loop** (``sass_report.steady_loop``) is
read as one warp's instruction stream. One launch then costs (all terms below are printed per case):

* **chain**: one warp runs one loop iteration in order, 1 instruction / clock, waiting for its
  operands: a synchronous global load (``LDG``) is ready ``dram_latency`` later, shared-memory loads
  ``SMEM_LAT`` cycles, ALU results ``ALU_LAT``, tensor-core results ``MMA_LAT``; a ``DEPBAR`` on
  cp.async copies costs ``dram_latency / (num_stages - 1)`` per iteration (that many copies in flight).
* **issue**: the warps resident on one SM scheduler issue one instruction per clock; integer-ALU
  instructions (``sass_report.PIPES["alu"]``) at half that rate.
* **mio**: one SM's shared-memory / L1 path moves 128 bytes per clock (``LDS``/``STS``/``LDSM``/
  ``LDG``/``LDGSTS`` cost their warp-wide bytes / 128, at least one clock).
* narrow global loads (``LDG.U16``/32-bit: x, scales, small arrays that are re-read) take
  ``cache_latency`` instead of ``dram_latency``;
* **tensor**: ``HMMA``/``HGMMA`` FLOPs over the SM's share of the *measured* dense matmul rate
  (cuBLAS 8192³; the datasheet rate is not reached by cuBLAS either).
* one iteration of an SM = the ``overlap_p``-norm of (chain, issue, mio, tensor) (p = inf: the max; the
  fitted p says the terms overlap imperfectly) with the CTAs the occupancy (registers,
  shared memory, threads) lets it hold; **waves**: the grid's CTAs in rounds of SMs × occupancy, each
  round as long as its busiest SM (plus one ``dram_latency`` to fill a cp.async pipeline);
* **bytes**: the launch cannot beat packed weights + scales + zeros + x + y + split-K partials over
  the copy bandwidth;
* **split-K tail**: store + atomic, then the last CTA of a tile reads ``n_split`` partial tiles with
  128-bit loads, ``REDUCE_INFLIGHT`` in flight, each a ``cache_latency``; **launch**: ``launch_us``;
* **stream-K** (small_batch ``schedule: "stream"``, not in the validation data): one round of CTAs, each
  ``iters`` K steps; one pipeline fill per tile it walks through, one split-K tail per shared tile it may
  add up (at most two), and the shared tiles' partials in the bytes.

Four parameters are fitted, each ONE number for every case (``Params``: ``dram_latency_ns``,
``cache_latency_ns``, ``launch_us``, ``overlap_p``; grid search + coordinate descent on the version-1 H100
measurement, ``validate``); the GPU figures come from ``GPUS`` with a source per figure, the few
cycle counts (``SMEM_LAT``, ``ALU_LAT``, ``MMA_LAT``, ``BAR_LAT``) are assumed. fp16 cuBLAS is modelled
from its measured rows: achieved fraction of max(bytes / bandwidth, FLOPs / peak) per M on the H100,
applied to the other GPU's ceilings. ``predict``/``compare`` read the fitted values from
``bench/results/sm90-static/validation.json``.

    git worktree add ../v1src bddbd22   # the kernels the H100 run measured (only to fill a cold SASS cache)
    python bench/speed_model.py validate [--json] [--out bench/results/sm90-static]
    python bench/speed_model.py predict --gpu h200 [--json]  # today's kernels, Llama-3-8B shapes
    python bench/speed_model.py grid --m 1 [--gpu h200]      # the tuner's candidates at one M, best first
    python bench/speed_model.py compare --measured matmul.json [--gpu h200]
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import sass_report as sr  # noqa: E402  (sets TRITON_INTERPRET=0, puts the repo on sys.path)
import triton  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache" / "speed_model"
H100_RUN = BENCH / "results" / "nvidia-h100-80gb-hbm3"
STATIC_DIR = BENCH / "results" / "sm90-static"

# ------------------------------------------------------------------ GPU table (one source per figure)
GPUS: dict[str, dict[str, Any]] = {
    "h100": dict(
        name="NVIDIA H100 80GB HBM3",
        sms=132,  # torch.cuda.get_device_properties on the measured card (matmul.json meta sm_count)
        clock_hz=1.98e9,  # SXM max boost, the clock nvidia-smi read under load on this workplace's H200 (same die)
        hbm_bps=3.004e12,  # measured 1 GiB device copy, bytes read + written (bench/NOTES.md, call 1)
        l2_bytes=52428800,  # matmul.json meta l2_bytes
        smem_per_sm=233472,  # 228 KB per SM (CUDA programming guide, compute capability 9.0)
        regs_per_sm=65536, max_threads=2048, max_ctas=32,  # same table
        schedulers=4,  # four SM sub-partitions, one warp-instruction per clock each (Hopper whitepaper)
        mio_bytes_per_clk=128,  # shared memory / L1 bytes per clock per SM (Hopper whitepaper: 33 TB/s at 132 SMs)
        fp16_flops=989.4e12,  # dense fp16 tensor rate, H100 SXM datasheet
        mma_flops=723e12,  # measured: fp16 torch.matmul 8192³ on the measured card (bench/NOTES.md, ceilings)
    ),
    "h200": dict(
        name="NVIDIA H200",
        sms=132,  # KINDS.md (torch read 132 multiprocessors)
        clock_hz=1.98e9,  # KINDS.md: nvidia-smi read SM 1980 MHz under load
        hbm_bps=4.3e12,  # KINDS.md: device-to-device copy 4.3 TB/s, bytes read + written
        l2_bytes=60 * 2**20,  # KINDS.md: 60 MB of L2
        smem_per_sm=233472, regs_per_sm=65536, max_threads=2048, max_ctas=32,  # CUDA guide, cc 9.0
        schedulers=4, mio_bytes_per_clk=128,  # same SM as the H100 (H200.md: "the same Hopper processor")
        fp16_flops=989.4e12,  # H200.md: the H100's arithmetic rates (datasheet)
        mma_flops=788e12,  # KINDS.md: bf16 8192³ through PyTorch, 769-798 TFLOP/s on random data (middle)
    ),
}
SMEM_LAT, ALU_LAT, MMA_LAT, BAR_LAT = 30, 4, 32, 20  # cycles; assumed, not fitted (order of published microbenchmarks)
REDUCE_INFLIGHT = 4  # v1 split-K reduction: 4 partial loads in flight (4 LDG.STRONG per iteration in its SASS)
FIT_GRID = {"dram_latency_ns": [100 + 25 * i for i in range(45)], "cache_latency_ns": [25 * i for i in range(1, 25)],
            "launch_us": [0.25 * i for i in range(25)], "overlap_p": [1, 1.25, 1.5, 2, 2.5, 3, 4, 6, 8, math.inf]}
LLAMA3_8B = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]  # (K, N): qkv, o, gate/up, down
PREDICT_M = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 2048, 4096]
CODES = [("pot", 2), ("pot", 3), ("pot", 4), ("int", 2), ("int", 3), ("int", 4)]
# version-1 packing: (code plane widths W0, W1) per code, as in that tree's bench/aot_check.py
V1_PLANES = {("pot", 2): (1, 0), ("pot", 3): (2, 0), ("pot", 4): (2, 1), ("int", 2): (2, 0), ("int", 3): (2, 1),
             ("int", 4): (4, 0)}


@dataclasses.dataclass(frozen=True)
class Params:
    """The fitted numbers, each one value for every case."""

    dram_latency_ns: float  # a wide (64/128-bit) global load that misses to HBM, under load
    cache_latency_ns: float  # a narrow global load (x, scales: small arrays re-read, L2/L1 hits); atomics
    launch_us: float  # per launch inside a CUDA graph, incl. the first CTA's start
    overlap_p: float  # SM iteration = p-norm of (chain, issue, smem, tensor): inf = max, 1 = sum


# ------------------------------------------------------------------ compile (cached) + loop statistics
def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _record(kern) -> dict[str, Any]:
    cubin = kern.asm["cubin"]
    return {"sass": sr.disassemble(cubin), "regs": sr.resources(cubin)["REG"], "smem": kern.metadata.shared}


# Compiles version-1 kernels in a fresh interpreter whose ``potkernels`` is the old tree.
_WORKER = r"""
import json, sys, importlib
src, bench, jobs = sys.argv[1:4]
sys.path.insert(0, src)
import potkernels  # the old tree, before sass_report puts this checkout on sys.path
sys.path.insert(1, bench)
import sass_report as sr
for job in json.load(open(jobs)):
    fn = getattr(importlib.import_module(job["module"]), job["fn"])
    b = sr.Build(fn, job["consts"], job["ptr_types"], 0.0, job["warps"], job["stages"])
    k = sr.compile_build(b, 90)
    cubin = k.asm["cubin"]
    rec = {"sass": sr.disassemble(cubin), "regs": sr.resources(cubin)["REG"], "smem": k.metadata.shared}
    json.dump(rec, open(job["out"], "w"))
    print("compiled", job["fn"], job["consts"], flush=True)
"""


def compile_v1(jobs: list[dict[str, Any]], src: Path, commit: str) -> list[dict[str, Any]]:
    """Compile version-1 kernels from ``src``, a checkout of ``commit`` (one subprocess for all cache misses;
    the cache is keyed by the commit, so a warm cache needs no checkout)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    jobs = [dict(j) for j in jobs]
    for j in jobs:
        j["out"] = str(CACHE / f"v1-{_key(j['fn'], j['consts'], j['warps'], j['stages'], triton.__version__)}"
                       f"-{commit}.json")
    todo = [j for j in jobs if not Path(j["out"]).exists()]
    if todo:
        if not (src / "potkernels" / "kernels" / "gemv.py").exists():
            raise SystemExit(f"{src} is not a version-1 checkout (git worktree add {src} {commit})")
        jf = CACHE / "jobs.json"
        jf.write_text(json.dumps(todo))
        print(f"compiling {len(todo)} version-1 kernels for sm_90 (~5 s each) ...", flush=True)
        env = dict(os.environ, TRITON_INTERPRET="0")
        subprocess.run([sys.executable, "-c", _WORKER, str(src), str(BENCH), str(jf)], check=True, env=env,
                       cwd="/")
    return [json.loads(Path(j["out"]).read_text()) for j in jobs]


def source_digest(root: Path) -> str:
    """Hash of every .py under ``root`` (a kernel edit anywhere in the package invalidates the cache)."""
    h = hashlib.sha1()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()[:12]


def compile_current(b: sr.Build, tag: Any) -> dict[str, Any]:
    """Compile one of this checkout's kernels (cached by ``tag``, triton version and kernel sources)."""
    import potkernels

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"v2-{_key(tag, triton.__version__, source_digest(Path(potkernels.__file__).parent))}.json"
    if not path.exists():
        path.write_text(json.dumps(_record(sr.compile_build(b, 90))))
    return json.loads(path.read_text())


def _width(op: str, mods: str) -> int:
    """Registers one load writes (LDG.128: 4, LDSM .x4: 4, ...)."""
    if op == "LDSM":
        m = re.search(r"\.(\d)$", mods) or re.search(r"M88\.(\d)", mods)
        return int(m.group(1)) if m else 1
    return max(1, sr.ldg_width(mods) // 32)


def _mem_bytes(op: str, mods: str) -> float:
    """Warp-wide bytes of one shared-memory / L1 instruction."""
    if op == "LDSM":
        return 128 * _width(op, mods)
    return 32 * sr.ldg_width(mods) / 8


def _mma_flops(op: str, mods: str) -> float:
    """FLOPs of one warp's share of an HMMA (m16n8k16 / m16n8k8) or HGMMA (64xNx16 per warpgroup)."""
    if op == "HMMA":  # .16816: m16 n8 k16; .1688: k8
        return 2 * 16 * 8 * (16 if "16816" in mods else 8)
    m = re.search(r"\.64x(\d+)x(\d+)", mods)
    return 2 * 64 * int(m.group(1)) * int(m.group(2)) / 4 if m else 0.0


@dataclasses.dataclass
class Loop:
    """Per-warp statistics of one steady-state loop iteration."""

    body: list
    instr: int
    alu: int
    mio_bytes: float  # summed max(bytes, 128) per shared / L1 instruction (one clock minimum)
    mma_flops: float
    cp_async: bool  # weights staged by cp.async (LDGSTS) with a DEPBAR wait
    registers: int
    smem: int

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Loop":
        body, _, _ = sr.steady_loop([tuple(s) for s in rec["sass"]])
        ops = [(op, mods) for _, op, mods, _ in body]
        mio = sum(max(_mem_bytes(op, mods), 128.0) for op, mods in ops
                  if op in ("LDS", "STS", "LDSM", "LDG", "LDGSTS", "STSM"))
        return cls(body=body, instr=len(body), alu=sum(sr.OPCODE_PIPE.get(op) == "alu" for op, _ in ops),
                   mio_bytes=mio, mma_flops=sum(_mma_flops(op, mods) for op, mods in ops if op in ("HMMA", "HGMMA")),
                   cp_async=any(op == "LDGSTS" for op, _ in ops), registers=rec["regs"], smem=rec["smem"])

    def chain_cycles(self, dram_cycles: float, cache_cycles: float) -> float:
        """One warp alone through one iteration, in order, 1 instruction per clock (memoized)."""
        memo = self.__dict__.setdefault("_chain", {})
        if (dram_cycles, cache_cycles) not in memo:
            memo[dram_cycles, cache_cycles] = self._chain_cycles(dram_cycles, cache_cycles)
        return memo[dram_cycles, cache_cycles]

    def _chain_cycles(self, dram_cycles: float, cache_cycles: float) -> float:
        return simulate_chain(self.body, dram_cycles, cache_cycles)[0]


def simulate_chain(body: list, dram_cycles: float, cache_cycles: float) -> tuple[float, list[str]]:
    """One warp alone through one loop iteration ``body``, in order, 1 instruction per clock, waiting for its
    operands: (cycles, the global loads it stalls on). A load is stalled on when the first read of its value comes
    before it lands — later in the same iteration, or (a value carried to the next iteration) early in that one;
    a load issued at the top of a K step and first read (or only copied / packed into the loop-carried register)
    a step's worth of instructions later is not."""
    ready: dict[int, float] = {}
    first_read: dict[int, float] = {}  # registers read before this iteration writes them: loop-carried
    loaded_by: dict[int, int] = {}  # register -> index of the LDG whose value it holds
    stalled: set[int] = set()
    t, mma_done = 0.0, 0.0
    for i, (_, op, mods, operands) in enumerate(body):
        regs = [int(r) for r in sr.REGISTER.findall(operands)]
        has_dest = op not in sr.NO_DEST_OPS and regs
        srcs = regs[1:] if has_dest else regs
        stalled.update(loaded_by[r] for r in srcs if r in loaded_by and ready[r] > t + 1)
        t = max([t + 1] + [ready.get(r, 0.0) for r in srcs])
        for r in srcs:
            if r not in ready:
                first_read.setdefault(r, t)
        if op == "WARPGROUP" and "DEPBAR" in mods or op == "WARPSYNC":
            t = max(t, mma_done)
        if op == "BAR":
            t += BAR_LAT
        if op == "HGMMA":
            mma_done = t + MMA_LAT
            continue
        if not has_dest:
            continue
        wide = op == "LDG" and sr.ldg_width(mods) >= 64
        lat = (dram_cycles if wide else cache_cycles if op == "LDG" else SMEM_LAT if op in ("LDS", "LDSM") else
               MMA_LAT if op == "HMMA" else ALU_LAT)
        w = _width(op, mods) if op in ("LDG", "LDS", "LDSM") else (4 if op == "HMMA" else 1)
        for r in range(regs[0], regs[0] + w):
            ready[r] = t + lat
            if op == "LDG":
                loaded_by[r] = i
            else:
                loaded_by.pop(r, None)
    # a value loaded for the next iteration (a prefetch) must land before that iteration reads it
    carried = {r: ready[r] - first_read[r] for r in first_read if r in ready}
    stalled.update(loaded_by[r] for r, c in carried.items() if r in loaded_by and c > t)
    names = [body[i][1] + body[i][2] for i in sorted(stalled)]
    return max([t] + list(carried.values())), names


def occupancy(loop: Loop, warps: int, gpu: dict[str, Any]) -> int:
    """CTAs one SM holds: registers (256-register warp granules), shared memory (+1 KB per CTA), threads."""
    per_warp = math.ceil(max(loop.registers, 1) * 32 / 256) * 256
    by_regs = (gpu["regs_per_sm"] // per_warp) // warps
    by_smem = gpu["smem_per_sm"] // (loop.smem + 1024)
    by_threads = gpu["max_threads"] // (32 * warps)
    return max(1, min(by_regs, by_smem, by_threads, gpu["max_ctas"]))


# ------------------------------------------------------------------ one launch
@dataclasses.dataclass
class Launch:
    """One kernel launch: its loop, its grid and the bytes it must move."""

    loop: Loop
    warps: int
    stages: int
    ctas: int
    iters: int  # steady-loop iterations per CTA
    n_split: int
    bytes: float
    tile_elems: int = 0  # fp32 partial sums per output tile (the split-K reduction reads n_split of them)
    reduce_inflight: int = REDUCE_INFLIGHT  # partial loads per thread the reduction has in flight at once
    segments: int = 1  # stream-K: tiles one CTA walks through (each restarts its pipeline)
    finishes: int = 1  # shared tiles one CTA may have to add up (each a split-K tail)


def predict_launch(ln: Launch, gpu: dict[str, Any], p: Params) -> dict[str, Any]:
    """Modelled µs of one launch and the term that bounds it."""
    clk = gpu["clock_hz"]
    lat = p.dram_latency_ns * 1e-9 * clk
    cache = p.cache_latency_ns * 1e-9 * clk
    chain = ln.loop.chain_cycles(lat, cache)
    if ln.loop.cp_async:
        chain = max(chain, lat / max(ln.stages - 1, 1))
    fill = lat if ln.loop.cp_async else 0.0  # the cp.async prologue; synchronous loads are in the chain
    occ = occupancy(ln.loop, ln.warps, gpu)
    per_wave = gpu["sms"] * occ
    cycles, terms = 0.0, collections.Counter()
    left = ln.ctas
    while left > 0:
        here = min(left, per_wave)
        r = math.ceil(here / gpu["sms"])
        wps = math.ceil(r * ln.warps / gpu["schedulers"])
        t = {"latency": chain,
             "issue": wps * max(ln.loop.instr, 2 * ln.loop.alu),
             "smem": r * ln.warps * ln.loop.mio_bytes / gpu["mio_bytes_per_clk"],
             "tensor": r * ln.warps * ln.loop.mma_flops / (gpu["mma_flops"] / gpu["sms"] / clk)}
        bound = max(t, key=t.get)
        terms[bound] += 1
        it = t[bound] if math.isinf(p.overlap_p) else sum(v ** p.overlap_p for v in t.values()) ** (1 / p.overlap_p)
        cycles += ln.iters * it + fill * ln.segments
        left -= here
    t_bytes = ln.bytes / gpu["hbm_bps"]
    t_loop = cycles / clk
    # split-K: store, atomic, then the last CTA's 128-bit partial loads, reduce_inflight at a time
    per_thread = math.ceil(ln.tile_elems / (32 * ln.warps) / 4)
    rounds = 2 + math.ceil(ln.n_split * per_thread / ln.reduce_inflight) if ln.n_split > 1 else 1
    tail = rounds * cache / clk * ln.finishes
    bound = "bytes" if t_bytes > t_loop else terms.most_common(1)[0][0]
    us = (max(t_bytes, t_loop) + tail) * 1e6 + p.launch_us
    return {"us": us, "bound": bound, "occupancy": occ, "waves": math.ceil(ln.ctas / per_wave),
            "chain_cycles": round(chain), "ctas": ln.ctas, "n_split": ln.n_split, "iters": ln.iters,
            "bytes_us": t_bytes * 1e6, "loop_us": t_loop * 1e6, "tail_us": tail * 1e6}


def weight_bytes(kind: str, bits: int, k: int, n: int, g: int = 128, regime: str = "gemv") -> float:
    """Packed codes + fp16 scales (+ uint8 zero points for int) of one [N, K] weight; the int tensor-core
    kernels (``small_batch``, ``gemm``) read a 4-byte ``[scale | zero]`` word per group and row instead
    (``Packed.tile_scales``)."""
    per_group = 2 if kind == "pot" else (4 if regime in ("small_batch", "gemm") else 3)
    return n * k * bits / 8 + n * math.ceil(k / g) * per_group


def io_bytes(m: int, k: int, n: int, n_split: int) -> float:
    """fp16 x and y, and the fp32 split-K partials written then read."""
    return 2 * m * (k + n) + (8 * n_split * m * n if n_split > 1 else 0)


def _split_v1(tiles: int, k_steps: int, cfg: dict[str, Any], sms: int) -> int:
    """The version-1 dispatcher's split-K count (splits rounded up to cover ``waves`` × SMs; today's rule is
    ``launch.split_count``)."""
    if "split" in cfg:
        return max(1, min(int(cfg["split"]), k_steps))
    return max(1, min(-(-int(cfg.get("waves", 2)) * sms // tiles), k_steps))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------ version 1 (validation)
def v1_table(commit: str) -> dict[str, Any]:
    """The config table of the measured commit (read from git: no checkout needed)."""
    out = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:potkernels/kernels/configs/default.json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def v1_config(table: dict[str, Any], regime: str, kind: str, bits: int, m: int, n: int, k: int) -> dict[str, Any]:
    """The launch config the measured run used: that table's H100 entry (same lookup rules as today)."""
    from potkernels.kernels import configs as cur  # key/size-class rules unchanged since v1

    key = f"{kind}{bits}:m{min(1 << max(m - 1, 0).bit_length(), 1024)}:{cur.size_class(n, k)}"
    kb, mb, sz = key.split(":")
    for dev in (GPUS["h100"]["name"], "default"):
        entries = table.get(dev, {}).get(regime, {})
        for cand in (f"{a}:{b}:{c}" for a in (kb, "*") for b in (mb, "*") for c in (sz, "*")):
            if cand in entries:
                return dict(entries[cand])
    raise KeyError(f"no v1 {regime} config for {key}")


def v1_job(regime: str, kind: str, bits: int, cfg: dict[str, Any]) -> dict[str, Any]:
    w0, w1 = V1_PLANES[(kind, bits)]
    base = dict(IS_POT=kind == "pot", W0=w0, W1=w1, IS_BF16=False, HAS_BIAS=False, SPLIT=True, FUSED_REDUCE=True)
    if regime == "gemv":
        consts = dict(base, EVEN_K=True, BLOCK_R=cfg["BLOCK_R"], BLOCK_N=cfg["BLOCK_N"])
        mod, fn = "potkernels.kernels.gemv", "gemv_kernel"
    else:
        loader = {"dup": 0, "expand": 1, "sliced": 2}[cfg.get("LOADER", "expand")]
        consts = dict(base, LOADER=loader, SCALE_PER_TILE=128 % cfg["BLOCK_K"] == 0, BLOCK_M=cfg["BLOCK_M"],
                      BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"])
        mod, fn = "potkernels.kernels.small_batch", "small_batch_kernel"
    return {"module": mod, "fn": fn, "consts": consts, "ptr_types": {"x_ptr": "fp16", "y_ptr": "fp16"},
            "warps": int(cfg.get("num_warps", 4)), "stages": int(cfg.get("num_stages", 2))}


def v1_launch(regime: str, kind: str, bits: int, m: int, k: int, n: int, cfg: dict[str, Any], loop: Loop,
              sms: int) -> Launch:
    """Grid of the version-1 host code (that tree's api.gemv / api.small_batch)."""
    kp = _cdiv(k, 32) * 32
    if regime == "gemv":
        br, bn = cfg["BLOCK_R"], cfg["BLOCK_N"]
        n_rows = kp // 32
        tiles = _cdiv(n, bn) * m
        ns = _split_v1(tiles, _cdiv(n_rows, br), cfg, sms)
        rps = _cdiv(_cdiv(n_rows, ns), br) * br
        ns = _cdiv(n_rows, rps)
        iters, tile = rps // br, bn
    else:
        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        tile = bm * bn
        tiles = _cdiv(n, bn) * _cdiv(m, bm)
        ns = _split_v1(tiles, _cdiv(kp, bk), cfg, sms)
        kps = _cdiv(_cdiv(kp, bk), ns) * bk
        ns = _cdiv(kp, kps)
        iters = kps // bk
    return Launch(loop, int(cfg.get("num_warps", 4)), int(cfg.get("num_stages", 2)), tiles * ns, iters, ns,
                  weight_bytes(kind, bits, k, n) + io_bytes(m, k, n, ns), tile)


def measured_rows(path: Path = H100_RUN / "matmul.json") -> list[dict[str, Any]]:
    return json.loads(path.read_text())["rows"]


def validation_cases(src: Path, commit: str) -> list[dict[str, Any]]:
    """Every measured fused-kernel row (gemv, small_batch) with its compiled version-1 loop."""
    rows = [r for r in measured_rows() if r["regime"] in ("gemv", "small_batch")]
    table = v1_table(commit)
    cases, jobs = [], []
    for r in rows:
        kind, bits = r["impl"][:3], int(r["impl"][3:])
        cfg = v1_config(table, r["regime"], kind, bits, r["M"], r["N"], r["K"])
        cases.append(dict(row=r, kind=kind, bits=bits, cfg=cfg))
        jobs.append(v1_job(r["regime"], kind, bits, cfg))
    uniq = {json.dumps(j, sort_keys=True): j for j in jobs}
    recs = dict(zip(uniq, compile_v1(list(uniq.values()), src, commit)))
    loops = {key: Loop.from_record(rec) for key, rec in recs.items()}
    for c, j in zip(cases, jobs):
        r = c["row"]
        c["launch"] = v1_launch(r["regime"], c["kind"], c["bits"], r["M"], r["K"], r["N"], c["cfg"],
                                loops[json.dumps(j, sort_keys=True)], GPUS["h100"]["sms"])
    return cases


def errors(cases: list[dict[str, Any]], p: Params) -> list[float]:
    return [predict_launch(c["launch"], GPUS["h100"], p)["us"] / (c["row"]["ms"] * 1e3) - 1 for c in cases]


def fit(cases: list[dict[str, Any]]) -> Params:
    """One value per parameter for all cases: the full coarse grid (every 4th point of ``FIT_GRID``, p on
    its whole list), then coordinate descent on the fine grid from its four best points. Score:
    max(median |error|, max |error| / 2.33), i.e. both sides of the bar (15 % / 35 %) weighted alike."""
    def score(p: Params) -> float:
        e = [abs(x) for x in errors(cases, p)]
        return max(statistics.median(e), max(e) / 2.33)

    names = list(FIT_GRID)
    coarse = [FIT_GRID[n][::4] if n != "overlap_p" else FIT_GRID[n] for n in names]
    starts = sorted(itertools.product(*coarse), key=lambda v: score(Params(*v)))[:4]
    best = None
    for start in starts:  # coordinate descent on the fine grid from the four best coarse points
        cur = dict(zip(names, start))
        for _ in range(3):
            for name, grid in FIT_GRID.items():
                cur[name] = min(grid, key=lambda v: score(Params(**dict(cur, **{name: v}))))
        if best is None or score(Params(**cur)) < score(best):
            best = Params(**cur)
    return best


def cmd_validate(args) -> int:
    cases = validation_cases(args.v1_src, args.v1_commit)
    p = fitted_params() if args.no_fit else fit(cases)
    lines = ["| K×N | M | code | regime | config | measured µs | predicted µs | error | bound | regs | occ | "
             "CTAs | split | iters | chain cyc |", "|" + "---|" * 15]
    errs, worst = [], []
    for c in cases:
        r, ln = c["row"], c["launch"]
        pr = predict_launch(ln, GPUS["h100"], p)
        meas = r["ms"] * 1e3
        e = pr["us"] / meas - 1
        errs.append(e)
        cfg = ",".join(f"{k}={v}" for k, v in c["cfg"].items() if k != "waves") + f",waves={c['cfg'].get('waves')}"
        lines.append(f"| {r['K']}×{r['N']} | {r['M']} | {r['impl']} | {r['regime']} | {cfg} | {meas:.1f} | "
                     f"{pr['us']:.1f} | {100 * e:+.0f} % | {pr['bound']} | {ln.loop.registers} | {pr['occupancy']} | "
                     f"{pr['ctas']} | {pr['n_split']} | {pr['iters']} | {pr['chain_cycles']} |")
        worst.append((abs(e), f"{r['impl']} {r['regime']} K×N {r['K']}×{r['N']} M={r['M']}: measured {meas:.1f} µs, "
                                f"predicted {pr['us']:.1f} µs ({100 * e:+.0f} %, {pr['bound']})"))
    ae = [abs(e) for e in errs]
    summary = {"cases": len(errs), "median_rel_err": round(statistics.median(ae), 4), "max_rel_err": round(max(ae), 4),
               "mean_signed_err": round(statistics.mean(errs), 4),
               "within_15pct": sum(x <= 0.15 for x in ae), "within_35pct": sum(x <= 0.35 for x in ae),
               "fitted": dataclasses.asdict(p),
               "fit": "coarse grid + coordinate descent (speed_model.fit), one value each for all cases",
               "v1_commit": args.v1_commit, "triton": triton.__version__, "gpu": GPUS["h100"]["name"],
               "measured": str((H100_RUN / "matmul.json").relative_to(REPO)),
               "worst": [w for _, w in sorted(worst, reverse=True)[:8]],
               "bar_met": len(errs) >= 40 and statistics.median(ae) <= 0.15 and max(ae) <= 0.35}
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        head = [f"# Speed model vs the H100 measurement (version-1 kernels at {args.v1_commit})", "",
                f"`python bench/speed_model.py validate --json` — triton {triton.__version__} sm_90 SASS; fitted "
                f"(one number each, all cases): {', '.join(f'{k} = {v}' for k, v in dataclasses.asdict(p).items())}. "
                f"Cases {summary['cases']}, median |error| {100 * summary['median_rel_err']:.1f} %, "
                f"max {100 * summary['max_rel_err']:.1f} %. Predictions are a model; the measured column is "
                f"{summary['measured']} (H100 80GB HBM3, triton 3.6.0, CUDA-graph replays).", ""]
        (args.out / "validation.md").write_text("\n".join(head + lines) + "\n")
        (args.out / "validation.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary) if args.json else
          f"cases {summary['cases']} median {summary['median_rel_err']:.3f} max {summary['max_rel_err']:.3f}")
    return 0


# ------------------------------------------------------------------ today's kernels (predict)
def kernel_specs() -> dict[str, sr.KernelSpec]:
    """The static report's kernel specs by regime name."""
    if not sr.SPECS:
        sr._kernel_specs()
    return {s.name: s for s in sr.SPECS}


def dispatch_regime(kind: str, bits: int, m: int, k: int, n: int, gpu: dict[str, Any]) -> str:
    """The regime the dispatcher (``api.pick_regime``) takes for one call on ``gpu``'s table entry."""
    from potkernels.kernels import api, configs

    class _W:  # what api.pick_regime reads of a Packed
        pass

    w = _W()
    w.kind, w.bits, w.N, w.K = kind, bits, n, k
    configs.lookup.cache_clear()
    return api.pick_regime(w, m, device=gpu["name"])


def current_launch(kind: str, bits: int, m: int, k: int, n: int, gpu: dict[str, Any],
                   specs: dict[str, sr.KernelSpec], config: dict[str, Any] | None = None) -> tuple[str, Launch]:
    """Regime, config and grid the dispatcher (kernels/api.py) uses for one call, with its loop;
    ``config`` replaces the table's config of that regime (the ``grid`` command)."""
    from potkernels.kernels import configs, gemv, launch, small_batch

    regime = dispatch_regime(kind, bits, m, k, n, gpu)
    if regime == "dequant_mm":
        raise NotImplementedError("dequant_mm is not modelled (no table entry dispatches to it)")
    cfg = dict(config) if config is not None else configs.lookup(regime, kind, bits, m, n, k, device=gpu["name"])
    if regime == "gemv":  # the x rows one program multiplies (gemv.launch)
        cfg = dict(cfg, BLOCK_M=min(triton.next_power_of_2(m), gemv.gemv_tiles(cfg)[2]))
    b = specs[regime].build(kind, bits, 128, cfg)
    loop = Loop.from_record(compile_current(b, (regime, kind, bits, cfg)))
    kp = _cdiv(k, 32) * 32
    w_reads, segments, finishes, partial_bytes = 1, 1, 1, None
    if regime == "gemv":
        bn, br = int(cfg["BLOCK_N"]), int(cfg.get("BLOCK_R", 1))  # as gemv.launch
        n_runs = kp // 32
        tiles = _cdiv(n, bn) * _cdiv(m, cfg["BLOCK_M"])
        ns = launch.split_count(tiles, _cdiv(n_runs, br), cfg, gpu["sms"])
        rps = _cdiv(_cdiv(n_runs, br), ns) * br
        ns = _cdiv(n_runs, rps)
        ctas, iters, tile = tiles * ns, rps // br, bn * cfg["BLOCK_M"]
        w_reads = _cdiv(m, cfg["BLOCK_M"])  # each block of x rows streams W once
    else:
        bm, bn, bk = launch.mma_tiles(regime, cfg)
        tile = bm * bn
        tiles = _cdiv(n, bn) * _cdiv(m, bm)
        k_steps = _cdiv(kp, bk)
        if regime == "small_batch" and launch.stream_k(cfg):  # as small_batch.launch
            ctas, iters, ns = launch.stream_geometry(tiles, k_steps, cfg, gpu["sms"])
            segments, finishes = launch.stream_parts(iters, k_steps), min(2, ns - 1)
            # partials of the shared tiles, written and read (a tile's edge rows past M / N are not stored)
            parts = [((t + 1) * k_steps - 1) // iters - (t * k_steps) // iters + 1 for t in range(tiles)]
            shared = sum(c for c in parts if c > 1) / tiles
            partial_bytes = 8 * shared * m * n
        elif regime == "small_batch":
            ns = launch.split_count(tiles, k_steps, cfg, gpu["sms"])
            kps = _cdiv(k_steps, ns) * bk
            ns = _cdiv(kp, kps)
            iters = kps // bk
            ctas = tiles * ns
        else:
            ns, iters = 1, k_steps
            ctas = tiles * ns
    # today's reduction loads a chunk of splits at once (splitk.splitk_finish): chunk × loads per thread in flight
    chunk = gemv.GEMV_REDUCE_CHUNK if regime == "gemv" else small_batch.reduce_chunk(*launch.mma_tiles(regime, cfg)[:2],
                                                                                      b.num_warps)
    per_thread = math.ceil(tile / (32 * b.num_warps) / 4)
    io = io_bytes(m, k, n, ns) if partial_bytes is None else io_bytes(m, k, n, 1) + partial_bytes
    return regime, Launch(loop, b.num_warps, b.num_stages, ctas, iters, ns,
                          weight_bytes(kind, bits, k, n, regime=regime) * w_reads + io, tile,
                          reduce_inflight=int(getattr(chunk, "value", chunk)) * per_thread,
                          segments=segments, finishes=max(1, finishes))


def fp16_efficiency(rows: Iterable[dict[str, Any]]) -> dict[int, float]:
    """Achieved fraction of the H100 ceiling max(bytes / bw, FLOPs / peak) of fp16 cuBLAS per M (median over
    the measured Llama-8B and 8192² shapes)."""
    by_m = collections.defaultdict(list)
    for r in rows:
        if r["impl"] == "fp16" and r["shape"] in ("llama8b", "square8k"):
            by_m[r["M"]].append(fp16_ceiling_us(r["M"], r["K"], r["N"], GPUS["h100"]) / (r["ms"] * 1e3))
    return {m: statistics.median(v) for m, v in sorted(by_m.items())}


def fp16_ceiling_us(m: int, k: int, n: int, gpu: dict[str, Any]) -> float:
    return max((2 * n * k + 2 * m * (k + n)) / gpu["hbm_bps"], 2 * m * n * k / gpu["fp16_flops"]) * 1e6


def fp16_us(m: int, k: int, n: int, gpu: dict[str, Any], eff: dict[int, float]) -> float:
    """Modelled fp16 time: the ceiling over the measured efficiency at M (log-M interpolation, clamped)."""
    ms = sorted(eff)
    if m <= ms[0] or m >= ms[-1]:
        e = eff[ms[0] if m <= ms[0] else ms[-1]]
    else:
        hi = next(x for x in ms if x >= m)
        lo = max(x for x in ms if x <= m)
        f = 0.0 if hi == lo else (math.log(m) - math.log(lo)) / (math.log(hi) - math.log(lo))
        e = eff[lo] * (1 - f) + eff[hi] * f
    return fp16_ceiling_us(m, k, n, gpu) / e


def ceiling_us(kind: str, bits: int, m: int, k: int, n: int, gpu: dict[str, Any], p: Params) -> float:
    """The least any one-launch kernel can take in this model: the fitted launch cost plus the larger of
    moving the packed weight, x and y once (no split-K partials) and the FLOPs at the measured MMA rate.
    A layer's matmul needs one launch (qkv and gate/up are already fused in ``LLAMA3_8B``; the four
    layers depend on each other through attention and the activation)."""
    t_bytes = (weight_bytes(kind, bits, k, n) + io_bytes(m, k, n, 1)) / gpu["hbm_bps"]
    return max(t_bytes, 2 * m * n * k / gpu["mma_flops"]) * 1e6 + p.launch_us


def fitted_params() -> Params:
    path = STATIC_DIR / "validation.json"
    if not path.exists():
        raise SystemExit(f"{path} missing: run `python bench/speed_model.py validate --out {STATIC_DIR}` first")
    return Params(**json.loads(path.read_text())["fitted"])


def predictions(gpu_key: str, p: Params, ms: list[int] = PREDICT_M,
                codes: list[tuple[str, int]] = CODES) -> list[dict[str, Any]]:
    """Per code × M: modelled µs of today's kernels summed over ``LLAMA3_8B``, the modelled fp16 µs, the
    speed-up, the term that bounds most of the time, and the model's ceiling for any kernel with one
    launch per layer (:func:`ceiling_us`)."""
    gpu = GPUS[gpu_key]
    specs = kernel_specs()
    eff = fp16_efficiency(measured_rows())
    out = []
    for kind, bits in codes:
        for m in ms:
            tot, ref, best, bounds, regime = 0.0, 0.0, 0.0, collections.Counter(), ""
            for k, n in LLAMA3_8B:
                regime, ln = current_launch(kind, bits, m, k, n, gpu, specs)
                pr = predict_launch(ln, gpu, p)
                tot += pr["us"]
                ref += fp16_us(m, k, n, gpu, eff)
                best += ceiling_us(kind, bits, m, k, n, gpu, p)
                bounds[pr["bound"]] += pr["us"]
            out.append({"code": f"{kind}{bits}", "M": m, "regime": regime, "us": round(tot, 1),
                        "fp16_us": round(ref, 1), "speedup": round(ref / tot, 2), "bound": bounds.most_common(1)[0][0],
                        "ceiling_speedup": round(ref / best, 2)})
    return out


def cmd_predict(args) -> int:
    p = fitted_params()
    rows = predictions(args.gpu, p)
    v = json.loads((STATIC_DIR / "validation.json").read_text())
    print(f"# {GPUS[args.gpu]['name']}: modelled µs summed over Llama-3-8B (K×N) {LLAMA3_8B}, g128, fp16 x "
          f"(a model: validation median |err| {100 * v['median_rel_err']:.0f} %, max {100 * v['max_rel_err']:.0f} %)")
    print(f"{'code':6s} {'M':>5s} {'regime':12s} {'pred µs':>9s} {'fp16 µs':>9s} {'× fp16':>7s} {'ceiling':>7s} bound")
    for r in rows:
        print(f"{r['code']:6s} {r['M']:5d} {r['regime']:12s} {r['us']:9.1f} {r['fp16_us']:9.1f} {r['speedup']:7.2f} "
              f"{r['ceiling_speedup']:7.2f} {r['bound']}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"predict_{args.gpu}.json").write_text(json.dumps(
            {"gpu": GPUS[args.gpu]["name"], "params": dataclasses.asdict(p), "triton": triton.__version__,
             "shapes_KxN": LLAMA3_8B, "rows": rows}, indent=1) + "\n")
    if args.json:
        print(json.dumps([{k: r[k] for k in ("code", "M", "speedup", "ceiling_speedup", "bound")} for r in rows]))
    return 0


def cmd_grid(args) -> int:
    """Every tuner candidate of the regime the dispatcher picks at ``--m`` (``tune.candidates``), per
    code: modelled µs summed over ``LLAMA3_8B``, best first; with ``--by-class`` per size class of the
    config table (``configs.size_class``) and, for several codes, the joint ranking (µs summed over the
    codes). How the GEMV and small_batch table entries were chosen."""
    from potkernels.kernels import configs, tune

    p = fitted_params()
    specs = kernel_specs()
    gpu = GPUS[args.gpu]
    eff = fp16_efficiency(measured_rows())
    groups = collections.defaultdict(list)
    for k, n in LLAMA3_8B:
        groups[configs.size_class(n, k) if args.by_class else "*"].append((k, n))
    out = {}
    for cls, shapes in sorted(groups.items()):
        ref = sum(fp16_us(args.m, k, n, gpu, eff) for k, n in shapes)
        joint: dict[str, float] = collections.Counter()
        for kind, bits in args.codes:
            regime = dispatch_regime(kind, bits, args.m, *shapes[0], gpu)
            rows = []
            for cfg in tune.candidates(regime, args.m):
                us = sum(predict_launch(current_launch(kind, bits, args.m, k, n, gpu, specs, cfg)[1], gpu, p)["us"]
                         for k, n in shapes)
                rows.append({"config": cfg, "us": round(us, 2), "speedup": round(ref / us, 3)})
                joint[json.dumps(cfg)] += us
            rows.sort(key=lambda r: r["us"])
            out[f"{kind}{bits}:{cls}"] = {"regime": regime, "rows": rows[:args.top]}
            print(f"# {kind}{bits} M={args.m} size class {cls} {regime} ({len(rows)} candidates, fp16 {ref:.1f} µs)")
            for r in rows[:args.top]:
                print(f"  {r['us']:8.2f} µs  ×{r['speedup']:.3f}  {r['config'] and json.dumps(r['config'])}")
        if len(args.codes) > 1:
            best = sorted(joint.items(), key=lambda kv: kv[1])[:args.top]
            out[f"joint:{cls}"] = [{"config": json.loads(c), "us": round(us, 2)} for c, us in best]
            print(f"# joint ({','.join(f'{k}{b}' for k, b in args.codes)}) M={args.m} size class {cls}")
            for c, us in best:
                print(f"  {us:8.2f} µs  {c}")
    if args.json:
        print(json.dumps(out))
    return 0


def cmd_compare(args) -> int:
    """Predicted vs measured for rows in bench/matmul.py's JSON form (today's kernels). ``--dry-run``
    compares the model with itself on two synthetic rows (checks the plumbing on a CPU box)."""
    p = fitted_params()
    specs = kernel_specs()
    gpu = GPUS[args.gpu]
    if args.dry_run:
        rows = [{"impl": f"{kind}{bits}", "M": m, "K": 4096, "N": 4096, "regime": None,
                 "ms": predict_launch(current_launch(kind, bits, m, 4096, 4096, gpu, specs)[1], gpu, p)["us"] / 1e3}
                for kind, bits, m in (("pot", 4, 1), ("int", 4, 16))]
    elif args.measured is None:
        raise SystemExit("compare needs --measured PATH (bench/matmul.py's JSON) or --dry-run")
    else:
        rows = measured_rows(args.measured)
    errs = []
    print(f"{'K×N':12s} {'M':>5s} {'code':6s} {'regime':12s} {'meas µs':>8s} {'pred µs':>8s} {'err':>6s} bound")
    for r in rows:
        if r["impl"][:3] not in ("pot", "int") or not r["impl"][3:].isdigit() or r["regime"] == "dequant_mm":
            continue
        regime, ln = current_launch(r["impl"][:3], int(r["impl"][3:]), r["M"], r["K"], r["N"], gpu, specs)
        pr = predict_launch(ln, gpu, p)
        meas = r["ms"] * 1e3
        errs.append(pr["us"] / meas - 1)
        print(f"{r['K']}×{r['N']:<7d} {r['M']:5d} {r['impl']:6s} {regime:12s} {meas:8.1f} {pr['us']:8.1f} "
              f"{100 * errs[-1]:+5.0f}% {pr['bound']}")
    if not errs:
        print("no fused-kernel rows in", args.measured)
        return 1
    ae = [abs(e) for e in errs]
    print(json.dumps({"cases": len(errs), "median_rel_err": round(statistics.median(ae), 4),
                      "max_rel_err": round(max(ae), 4), "gpu": gpu["name"], "params": dataclasses.asdict(p)}))
    return 0


def _codes(text: str) -> list[tuple[str, int]]:
    """``"pot4,int3"`` → ``[("pot", 4), ("int", 3)]``, each one of :data:`CODES`."""
    names = {f"{k}{b}": (k, b) for k, b in CODES}
    bad = [c for c in text.split(",") if c not in names]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown code(s) {', '.join(bad)}; expected some of {', '.join(names)}")
    return [names[c] for c in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="predict the measured H100 rows of the version-1 kernels")
    v.add_argument("--v1-src", type=Path, default=REPO.parent / "v1src",
                   help="checkout of the measured commit, outside this repo (git worktree add ../v1src bddbd22)")
    v.add_argument("--v1-commit", default="bddbd22", help="the commit the H100 run measured (its configs, cache key)")
    v.add_argument("--no-fit", action="store_true", help="use the committed fitted parameters")
    v.add_argument("--out", type=Path, default=None,
                   help="write validation.{md,json} here (e.g. bench/results/sm90-static)")
    v.add_argument("--json", action="store_true")
    pr = sub.add_parser("predict", help="today's kernels on Llama-3-8B shapes, every code × M")
    pr.add_argument("--gpu", choices=sorted(GPUS), default="h200")
    pr.add_argument("--out", type=Path, default=None)
    pr.add_argument("--json", action="store_true")
    g = sub.add_parser("grid", help="every tuner candidate at one M, per code, best first (how configs are chosen)")
    g.add_argument("--gpu", choices=sorted(GPUS), default="h200")
    g.add_argument("--m", type=int, default=1)
    g.add_argument("--codes", type=_codes, default="pot4,pot3,pot2,int4,int3,int2",
                   help="comma-separated, each one of " + ",".join(f"{k}{b}" for k, b in CODES))
    g.add_argument("--top", type=int, default=5, help="rows shown per code")
    g.add_argument("--by-class", action="store_true", help="rank per size class of the config table (s/m/l)")
    g.add_argument("--json", action="store_true")
    c = sub.add_parser("compare", help="predicted vs measured rows (bench/matmul.py JSON)")
    c.add_argument("--measured", type=Path, default=None, help="bench/matmul.py JSON of a GPU run")
    c.add_argument("--dry-run", action="store_true", help="model vs itself on two synthetic rows (CPU check)")
    c.add_argument("--gpu", choices=sorted(GPUS), default="h200")
    args = ap.parse_args(argv)
    return {"validate": cmd_validate, "predict": cmd_predict, "grid": cmd_grid, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

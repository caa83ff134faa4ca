"""Fused PoT / int matmul vs float F.linear (fp16 on a GPU, fp32 on a CPU) over an M sweep of LLM layer shapes.

    python bench/matmul.py [--quick] [--shapes llama8b,square8k,gpt2,smollm2] [--m 1,2,4,...]
                           [--pot-bits 2,3,4] [--int-bits 2,3,4] [--device cuda|cpu] [--tune]

Per (shape K×N, M, implementation): median time (CUDA-graph replays of rotated launches, see _common.bench;
inputs rotated over > 2×L2 of buffers), TFLOP/s = 2MNK/t, GB/s = (packed weight + scales + x + y
bytes)/t, % of the HBM bandwidth measured in the same run by a large device-to-device copy,
speed-up vs fp16 ``F.linear`` (``x_fp16``; on a CPU fp32, ``x_fp32``) and (PoT) vs the int kernel at the same bits; gemlite's int4 kernel
too when ``import gemlite`` works. CPU mode (torch reference path, tiny subset) only checks the
script. Results: JSON (always) + PNG (when matplotlib is installed) under bench/results/<device>/
($OUT/bench/results/<device>/ if $OUT).
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from _common import (HelpFormatter, Rotation, baseline_name, bench, hbm_bandwidth_gbs, metadata, pick_device,
                     print_table, results_dir, save_plot, write_json)

from potkernels import IntConfig, PoTConfig, ops
from potkernels.format import quantize_int, quantize_pot
from potkernels.kernels import api

# (K, N) = (in_features, out_features)
SHAPES = {
    "llama8b": [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 1024)],
    "square8k": [(8192, 8192)],
    "gpt2": [(768, 2304), (768, 3072), (3072, 768)],
    "smollm2": [(576, 576), (576, 1536), (1536, 576)],
}
M_ALL = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 2048, 4096]  # every regime and table bucket class
QUICK_SHAPES = ((4096, 4096), (576, 1536))
QUICK_M = (1, 16, 64, 512)


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def make_packed(kind: str, bits: int, wf: torch.Tensor, group: int):
    cfg = PoTConfig(bits, group) if kind == "pot" else IntConfig(bits, group)
    p = quantize_pot(wf, cfg) if kind == "pot" else quantize_int(wf, cfg)
    return p, api.Packed(kind, p.qweight, p.scales, getattr(p, "zeros", None), bits, p.group_size, p.in_features)


def clone_packed(w: api.Packed) -> api.Packed:
    zeros = None if w.is_pot else w.zeros.clone()
    return api.Packed(w.kind, w.q.clone(), w.scales.clone(), zeros, w.bits, w.G, w.K)


def gemlite_int4(p, group: int):
    """gemlite's A16W4 layer from our int4 codes ((q − z)·s, HQQ convention), or None."""
    try:
        import gemlite
        from gemlite import DType, GemLiteLinear

        n, k = p.shape
        lin = GemLiteLinear(4, group_size=group, in_features=k, out_features=n, input_dtype=DType.FP16,
                            output_dtype=DType.FP16)
        lin.pack(p.codes().to(torch.uint8), p.scales.t().contiguous(), p.zeros.t().contiguous().half(), None)
        del gemlite
        return lin
    except Exception as e:  # not installed, unsupported shape / version: leave it out
        print(f"    gemlite int4 skipped: {type(e).__name__}: {str(e)[:80]}")
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None,
                    help="where to run (default: cuda when available, else cpu)")
    ap.add_argument("--quick", action="store_true",
                    help=f"GPU: only K×N {'×'.join(map(str, QUICK_SHAPES[0]))} and {'×'.join(map(str, QUICK_SHAPES[1]))}, "
                         f"M in {{{', '.join(map(str, QUICK_M))}}}, at most 20 ms of timing per point. (A CPU run is always a smoke "
                         f"test of the script: the first two SmolLM2 shapes of the selection, the first two M ≤ 16, "
                         f"4-bit codes, against fp32 F.linear.)")
    ap.add_argument("--shapes", default="llama8b,square8k,gpt2,smollm2",
                    help=f"comma list of shape families: {', '.join(SHAPES)}")
    ap.add_argument("--m", default=None, help="comma list of M, the activation rows (default: 1,2,4,...,2048)")
    ap.add_argument("--pot-bits", default="2,3,4", help="comma list of PoT code widths")
    ap.add_argument("--int-bits", default="2,3,4", help="comma list of int (baseline twin) code widths")
    ap.add_argument("--group", type=int, default=128, help="group size of every code")
    ap.add_argument("--warmup", type=float, default=10, help="ms of warm-up calls per measurement")
    ap.add_argument("--rep", type=float, default=30, help="ms of timed repetitions per measurement")
    ap.add_argument("--no-gemlite", action="store_true", help="leave out gemlite's int4 kernel (GPU)")
    ap.add_argument("--tune", action="store_true", help="autotune each (code, M, shape) key first; writes the table")
    args = ap.parse_args()
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    shapes = [(name, kn) for name in args.shapes.split(",") for kn in SHAPES[name]]
    ms = ints(args.m) if args.m else M_ALL
    codes = [("pot", b) for b in ints(args.pot_bits)] + [("int", b) for b in ints(args.int_bits)]
    if args.quick:
        shapes = [s for s in shapes if s[1] in QUICK_SHAPES]
        ms = [m for m in ms if m in QUICK_M] if not args.m else ms
    if not gpu:  # the torch reference path on 2 cores: just prove the script end to end
        shapes = [s for s in shapes if s[0] == "smollm2"][:2] or [("smollm2", (576, 576))]
        ms = [m for m in ms if m <= 16][:2] or [1]
        codes = [c for c in codes if c[1] == 4] or codes[:1]
    if args.tune:
        if not gpu:
            raise SystemExit("--tune needs a GPU")
        from potkernels.kernels.tune import tune

        for kind, bits in codes:
            tune(kind, bits, ms, [kn for _, kn in shapes], api.run_regime, api.pick_regime, args.group)
    dtype = torch.float16 if gpu else torch.float32
    base_name = baseline_name(device)  # fp16 F.linear on a GPU, fp32 on a CPU
    x_base = f"x_{base_name}"
    rep_ms = min(args.rep, 20) if args.quick else args.rep
    hbm = hbm_bandwidth_gbs(device)
    meta = metadata(device)
    print(f"{meta['device']}: measured copy bandwidth {hbm:.0f} GB/s; {len(shapes)} shapes x {len(ms)} M")
    rows = []
    for name, (k, n) in shapes:
        print(f"{name} K={k} N={n}")
        wf = torch.randn(n, k, device=device) * 0.02
        w16 = wf.to(dtype)
        packed = {c: make_packed(c[0], c[1], wf, args.group) for c in codes}
        gl = gemlite_int4(packed[("int", 4)][0], args.group) if gpu and not args.no_gemlite and ("int", 4) in packed \
            else None
        for m in ms:
            x_bytes, y_bytes = m * k * 2, m * n * 2
            base = Rotation(lambda i: (torch.randn(m, k, device=device, dtype=dtype), w16.clone()),
                            n * k * 2 + x_bytes, device)
            impls = {base_name: (lambda r=base: F.linear(*r.next()), n * k * w16.element_size())}
            for (kind, bits), (p, w) in packed.items():
                wbytes = p.nbytes
                if gpu:
                    rot = Rotation(lambda i, w=w: (torch.randn(m, k, device=device, dtype=dtype), clone_packed(w)),
                                   wbytes + x_bytes, device)
                    impls[f"{kind}{bits}"] = (lambda r=rot: api.matmul(*r.next()), wbytes)
                else:
                    fn = ops.pot_matmul if kind == "pot" else ops.int_matmul
                    xs = torch.randn(m, k, device=device, dtype=dtype)
                    impls[f"{kind}{bits}"] = (lambda fn=fn, xs=xs, p=p: fn(xs, p, backend="torch"), wbytes)
            if gl is not None:
                xs = [torch.randn(m, k, device=device, dtype=dtype) for _ in range(4)]
                gl_bytes = sum(t.numel() * t.element_size() for t in gl.parameters()) + \
                    sum(t.numel() * t.element_size() for t in gl.buffers())
                it = iter(range(10**12))
                impls["gemlite-int4"] = (lambda: gl(xs[next(it) % 4]), gl_bytes or packed[("int", 4)][0].nbytes)
            times = {}
            for impl, (fn, wbytes) in impls.items():
                try:
                    t = bench(fn, device, args.warmup, rep_ms)
                except Exception as e:  # keep the sweep going; the row records the failure
                    print(f"    {impl} M={m} failed: {type(e).__name__}: {str(e)[:120]}")
                    continue
                times[impl] = t
                gbs = (wbytes + x_bytes + y_bytes) / (t * 1e-3) / 1e9
                regime = api.pick_regime(packed[(impl[:3], int(impl[3:]))][1], m) \
                    if gpu and impl[:3] in ("pot", "int") else None
                rows.append({"shape": name, "K": k, "N": n, "M": m, "impl": impl, "regime": regime, "ms": t,
                             "TFLOPs": 2 * m * n * k / (t * 1e-3) / 1e12, "GBs": gbs, "pct_hbm": 100 * gbs / hbm})
            ref_t = times.get(base_name)
            for r in rows:
                if r["K"] == k and r["N"] == n and r["M"] == m:
                    r[x_base] = ref_t / r["ms"] if ref_t else None
                    twin = times.get("int" + r["impl"][3:]) if r["impl"].startswith("pot") else None
                    r["x_int_twin"] = twin / r["ms"] if twin else None
            line = " ".join(f"{i}={times[i] * 1e3:.1f}us" for i in times)
            print(f"  M={m:5d} {line}", flush=True)
        meta.update(hbm_copy_GBs=hbm, group_size=args.group, dtype=str(dtype), baseline=base_name,
                    mode="triton kernels" if gpu else "torch reference path")
        write_json(results_dir(device) / "matmul.json", meta, rows, complete=False)  # survives a timeout
    cols = ["shape", "K", "N", "M", "impl", "ms", "TFLOPs", "GBs", "pct_hbm", x_base, "x_int_twin"]
    print_table(rows, cols)
    print(f"\nspeed-up vs {base_name} F.linear (rows: shape, M; columns: implementation; pct = % of HBM copy "
          "bandwidth)")
    print_table(pivot(rows, x_base), ["shape", "K", "N", "M", *dict.fromkeys(f"{r['impl']}" for r in rows),
                              *dict.fromkeys(f"{r['impl']} pct" for r in rows if r["impl"][:3] in ("pot", "int"))])
    out = results_dir(device)
    write_json(out / "matmul.json", meta, rows, complete=True)
    save_plot(plot, rows, meta, path=out / "matmul.png")


def pivot(rows, x_base: str = "x_fp16"):
    """One line per (shape, M): speed-up vs the float baseline of every implementation, and % HBM of ours."""
    table = {}
    for r in rows:
        line = table.setdefault((r["shape"], r["K"], r["N"], r["M"]),
                                {"shape": r["shape"], "K": r["K"], "N": r["N"], "M": r["M"]})
        line[r["impl"]] = r.get(x_base)
        if r["impl"][:3] in ("pot", "int"):
            line[f"{r['impl']} pct"] = r["pct_hbm"]
    return list(table.values())


def plot(rows, meta, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = meta.get("baseline", "fp16")
    x_base = f"x_{base}"
    shapes = list(dict.fromkeys((r["shape"], r["K"], r["N"]) for r in rows))
    cols = min(4, len(shapes))
    nrows = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, (name, k, n) in zip(axes.flat, shapes):
        sub = [r for r in rows if (r["shape"], r["K"], r["N"]) == (name, k, n) and r.get(x_base)]
        for impl in dict.fromkeys(r["impl"] for r in sub):
            pts = sorted((r["M"], r[x_base]) for r in sub if r["impl"] == impl)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=impl,
                    linestyle="--" if impl.startswith(("int", "gemlite")) else "-")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{name} K={k} N={n}", fontsize=9)
        ax.set_xlabel("M")
        ax.set_ylabel(f"speed-up vs {base} F.linear")
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{meta['device']} — hbm copy {meta['hbm_copy_GBs']:.0f} GB/s — torch {meta['torch']}, "
                 f"triton {meta['triton']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

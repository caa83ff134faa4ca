"""PoT vs uniform-int decode cost at b = 2/3/4 bits.

(a) stand-alone dequant: packed → [N, K] fp16 (GB/s of packed read + fp16 written, weights/s);
    bound by the 2 bytes/weight written, so it hides most of the decode cost;
(b) decode-bound: potkernels.kernels.decode_bench decodes every weight of an L1-resident tile
    ``reps`` times in registers and reduces it against x (the M = 1 kernel's exact decode), no
    output traffic: weights/s here is the decoder's own throughput. ``packed GB/s equiv`` is that
    rate times the packed bytes/weight — above the HBM bandwidth means decode is not the limit.

    python bench/dequant.py [--device cuda|cpu] [--quick]

CPU mode times the torch reference path (unpack + decode; decode + matvec for (b)).
Results: JSON + PNG under bench/results/<device>/ ($OUT/bench/results/<device>/ when $OUT is set).
"""
from __future__ import annotations

import argparse

import torch

from _common import bench, hbm_bandwidth_gbs, metadata, pick_device, print_table, results_dir, write_json

from potkernels import IntConfig, PoTConfig, ops
from potkernels.format import quantize_int, quantize_pot
from potkernels.kernels import api


def packed_for(kind: str, bits: int, n: int, k: int, group: int, device):
    w = torch.randn(n, k, device=device)
    if kind == "pot":
        p = quantize_pot(w, PoTConfig(bits, group))
        return p, api.Packed("pot", p.qweight, p.scales, None, bits, p.group_size, k)
    p = quantize_int(w, IntConfig(bits, group))
    return p, api.Packed("int", p.qweight, p.scales, p.zeros, bits, p.group_size, k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None)
    ap.add_argument("--quick", action="store_true", help="one small shape, short timings")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--reps", type=int, default=None, help="decode passes per tile in (b)")
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--rep", type=float, default=40, help="ms of timed repetitions per measurement")
    args = ap.parse_args()
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    shapes = [(4096, 4096)] if args.quick else [(4096, 14336), (8192, 8192)]  # (K, N)
    if not gpu:
        shapes = [(576, 1536)] if args.quick else [(576, 1536), (1536, 576)]
    reps = args.reps or (64 if gpu else 1)
    rep_ms = min(args.rep, 20) if args.quick else args.rep
    hbm = hbm_bandwidth_gbs(device)
    print(f"{metadata(device)['device']}: measured copy bandwidth {hbm:.0f} GB/s")
    rows = []
    for k, n in shapes:
        x = torch.randn(k, device=device, dtype=torch.float16)
        for kind in ("pot", "int"):
            for bits in (2, 3, 4):
                p, w = packed_for(kind, bits, n, k, args.group, device)
                nk, packed_bytes = n * k, p.nbytes
                if gpu:
                    out = torch.empty(n, k, dtype=torch.float16, device=device)
                    t_a = bench(lambda: api.dequantize(w, torch.float16, out=out), device, args.warmup, rep_ms)
                    from potkernels.kernels.decode_bench import decode_reduce

                    t_b = bench(lambda: decode_reduce(w, x, reps), device, args.warmup, rep_ms)
                else:
                    t_a = bench(lambda: ops.dequantize(p, torch.float16, backend="torch"), device, 0, rep_ms)
                    xf = x.float()
                    t_b = bench(lambda: ops.dequantize(p, torch.float16, backend="torch").float() @ xf,
                                device, 0, rep_ms)
                dec_rate = reps * nk / (t_b * 1e-3)
                rows.append({
                    "K": k, "N": n, "code": f"{kind}{bits}", "bits_per_weight": round(8 * packed_bytes / nk, 3),
                    "dequant_ms": t_a, "dequant_GBs": (packed_bytes + 2 * nk) / (t_a * 1e-3) / 1e9,
                    "dequant_Gw_s": nk / (t_a * 1e-3) / 1e9,
                    "decode_ms": t_b, "decode_reps": reps, "decode_Gw_s": dec_rate / 1e9,
                    "decode_packed_GBs_equiv": dec_rate * packed_bytes / nk / 1e9,
                })
                print(f"  {k}x{n} {kind}{bits}: dequant {t_a:.3f} ms, decode-bound {dec_rate / 1e9:.4g} Gweights/s")
    for r in rows:  # PoT relative to its int twin at the same bits
        twin = next(t for t in rows if t["K"] == r["K"] and t["N"] == r["N"] and t["code"] == "int" + r["code"][-1])
        r["decode_vs_int"] = r["decode_Gw_s"] / twin["decode_Gw_s"]
        r["dequant_vs_int"] = r["dequant_Gw_s"] / twin["dequant_Gw_s"]
    cols = ["K", "N", "code", "bits_per_weight", "dequant_ms", "dequant_GBs", "dequant_Gw_s", "dequant_vs_int",
            "decode_Gw_s", "decode_packed_GBs_equiv", "decode_vs_int"]
    print_table(rows, cols)
    out = results_dir(device)
    meta = metadata(device)
    meta.update(hbm_copy_GBs=hbm, mode="triton kernels" if gpu else "torch reference path", reps=reps,
                group_size=args.group)
    write_json(out / "dequant.json", meta, rows)
    plot(rows, meta, out / "dequant.png")


def plot(rows, meta, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["K"], r["N"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / (2 * len(shapes))
    for ax, key, title in ((axes[0], "dequant_Gw_s", "(a) stand-alone dequant → fp16"),
                           (axes[1], "decode_Gw_s", "(b) decode-bound (registers, reduce)")):
        for si, (k, n) in enumerate(shapes):
            for ki, kind in enumerate(("pot", "int")):
                vals = [next(r[key] for r in rows if (r["K"], r["N"]) == (k, n) and r["code"] == f"{kind}{b}")
                        for b in (2, 3, 4)]
                off = (2 * si + ki) * width - 0.4 + width / 2
                ax.bar([b + off for b in (2, 3, 4)], vals, width, label=f"{kind} {k}x{n}")
        ax.set_xticks([2, 3, 4])
        ax.set_xlabel("bits")
        ax.set_ylabel("G weights / s")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"{meta['device']} — torch {meta['torch']}, triton {meta['triton']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

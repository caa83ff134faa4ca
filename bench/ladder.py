"""The quality ladder: WikiText-2 perplexity of SmolLM2-135M under every quantizer, one command.

Rows: FP | RTN int | HQQ int | int GPTQ | int GPTQ + frozen-code refine | RTN PoT | PoT step 1 | PoT two-step |
activation-weighted step 1 alone and under step 2 (``-act`` rows; see calibration/refine.py: the paper's
data-free step 1 collapses SmolLM2 at 3 bits) | PoT GPTQ | PoT GPTQ + frozen-code refine, at 4/3/2 bits g128
and 2 bits g64. Each row loads the float model afresh, quantizes it, and scores the WikiText-2 raw test text
(tokenized once, non-overlapping windows of ``--window`` tokens).

The GPTQ rows are like-for-like pairs: ``gptq-int`` / ``pot-gptq`` run the same calibration/gptq.py path
(the same ``--scale-fits`` refits), ``gptq-int-refine`` / ``pot-gptq-refine`` add the same frozen-code
refine (``--refine-epochs``); one invocation gives both kinds the same calibration windows and settings.
bench/results/ladder_like_for_like.{json,md} (CPU size, every row at this one setting; run split by
config with ``--resume``, the JSON lists each invocation) comes from

    python bench/ladder.py --rows fp gptq-int pot-gptq gptq-int-refine pot-gptq-refine --max-windows 4 \
        --samples 16 --seq-len 256 --batch-size 1 --refine-epochs 4 --threads 1 --name ladder_like_for_like

    python bench/ladder.py --device cuda                       # full ladder (GPU, ~20 min)
    python bench/ladder.py --max-windows 2 --rows fp rtn-pot   # quick local check

Under a 10-minute limit per command, split it and let ``--resume`` collect the rows:

    python bench/ladder.py --device cuda --rows fp rtn-int rtn-pot pot-init hqq-int
    python bench/ladder.py --device cuda --resume --rows pot-two-step --configs 4:128 3:128
    python bench/ladder.py --device cuda --resume --rows pot-two-step --configs 2:128
    python bench/ladder.py --device cuda --resume --rows pot-two-step --configs 2:64

Results go to bench/results/ladder.json (``--name`` changes the stem; one entry per row, rewritten after every
row so an interrupted run keeps what it finished; ``--resume`` skips rows already there) and ladder.md.
HQQ rows use the ``hqq`` package's quantizer (``Quantizer.quantize``, optimize=True, float
zero point) and evaluate its dequantized weights in ``nn.Linear`` (a quality row, not a speed row).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration.calibrate import calibrate_model  # noqa: E402
from calibration.data import get_calibration_ids  # noqa: E402
from calibration.eval import perplexity, read_text, tokenize_text  # noqa: E402
from calibration.gptq import DEFAULT_SCALE_FITS  # noqa: E402
from potkernels import IntConfig, IntLinear, PoTConfig, PoTLinear  # noqa: E402
from potkernels.integrations.hf import dequantize_model, eligible_linears  # noqa: E402
from potkernels.models import load_model  # noqa: E402
from potkernels.nn import float_weight, is_conv1d  # noqa: E402

ROWS = ("fp", "rtn-int", "hqq-int", "gptq-int", "gptq-int-refine", "rtn-pot", "pot-init", "pot-two-step",
        "pot-init-act", "pot-two-step-act", "pot-gptq", "pot-gptq-refine")
LABELS = {"fp": "FP (fp32)", "rtn-int": "RTN int", "rtn-pot": "RTN PoT", "pot-init": "PoT step 1 (paper)",
          "gptq-int-refine": "int GPTQ + frozen-code refine",
          "pot-two-step": "PoT two-step (paper)", "hqq-int": "HQQ int", "gptq-int": "int GPTQ",
          "pot-init-act": "PoT step 1, activation-weighted", "pot-two-step-act": "PoT two-step, activation-weighted",
          "pot-gptq": "PoT GPTQ", "pot-gptq-refine": "PoT GPTQ + frozen-code refine"}
GPTQ_ROWS = ("gptq-int", "gptq-int-refine", "pot-gptq", "pot-gptq-refine")
PAIRS = (("gptq-int", "pot-gptq"), ("gptq-int-refine", "pot-gptq-refine"))  # (int, PoT) twins: same path, same settings
CALIB_ROWS = {"pot-two-step", "pot-init-act", "pot-two-step-act", *GPTQ_ROWS}
CONFIGS = ((4, 128), (3, 128), (2, 128), (2, 64))
DATA = ROOT.parent / "shared" / "data"  # the offline data folder beside the checkout


def hqq_dequantized(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """HQQ round trip of ``w [N, K]`` with groups of ``group`` consecutive input columns.

    HQQ groups a flattened tensor, so a row whose length is not a multiple of ``group`` is
    split: the full groups, then the remainder as one smaller group (the project's partial
    last group).
    """
    from hqq.core.quantize import Quantizer

    n, k = w.shape
    full = k // group * group
    parts = []
    for lo, hi in ((0, full), (full, k)):
        if hi > lo:
            g = group if lo == 0 else hi - lo
            wq, meta = Quantizer.quantize(w[:, lo:hi].float().contiguous(), nbits=bits, group_size=g, optimize=True,
                                          axis=1, bitpack=False, compute_dtype=torch.float32, device=str(w.device))
            parts.append(Quantizer.dequantize(wq, meta).float().reshape(n, hi - lo))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def apply_hqq(model, bits: int, group: int) -> None:
    for _, m in list(eligible_linears(model, ("lm_head",))):
        w_hat = hqq_dequantized(float_weight(m), bits, group)
        m.weight.copy_(w_hat.t() if is_conv1d(m) else w_hat)


def run_row(row: str, bits: int, group: int, args, eval_ids: torch.Tensor, calib_ids) -> dict:
    model, _ = load_model(args.model, device=args.device)
    t0 = time.perf_counter()
    if row == "rtn-int":
        calibrate_model(model, IntConfig(bits, group), method="rtn", progress=False)
    elif row in ("rtn-pot", "pot-init"):
        calibrate_model(model, PoTConfig(bits, group), method="rtn" if row == "rtn-pot" else "init", progress=False)
    elif row in ("pot-two-step", "pot-two-step-act", "pot-init-act"):
        epochs = args.epochs_2bit if bits == 2 else args.epochs
        calibrate_model(model, PoTConfig(bits, group), calib_ids, "init" if row == "pot-init-act" else "two-step",
                        epochs=epochs, lr=args.lr, lam=args.lam, batch_size=args.batch_size, progress=True,
                        act_weighted=row.endswith("-act"))
    elif row in GPTQ_ROWS:
        cfg = IntConfig(bits, group) if row.startswith("gptq-int") else PoTConfig(bits, group)
        calibrate_model(model, cfg, calib_ids, "gptq", refine=row.endswith("refine"), epochs=args.refine_epochs,
                        lr=args.lr, lam=args.lam, batch_size=args.batch_size, progress=True,
                        scale_fits=args.scale_fits)
    elif row == "hqq-int":
        apply_hqq(model, bits, group)
    quant_s = time.perf_counter() - t0
    if args.backend == "decoded":
        dequantize_model(model)  # decode once: the same weights and F.linear as the 'torch' backend
    for m in model.modules():  # which matmul the packed layers use (see --backend)
        if isinstance(m, (PoTLinear, IntLinear)):
            m.backend = None if args.backend == "auto" else args.backend
    t0 = time.perf_counter()
    r = perplexity(model, eval_ids, args.window, max_windows=args.max_windows, batch_size=args.eval_batch,
                   progress=True)
    out = {"row": row, "bits": None if row == "fp" else bits, "group_size": None if row == "fp" else group,
           "ppl": r["ppl"], "nll": r["nll"], "tokens": r["tokens"], "windows": r["windows"], "window": r["window"],
           "window_nll": r["window_nll"], "ppl_first4": math.exp(sum(r["window_nll"][:4]) / len(r["window_nll"][:4])),
           "quantize_seconds": quant_s, "eval_seconds": time.perf_counter() - t0}
    rep = getattr(model, "calibration_report", None)
    if rep and rep.get("method") == "gptq":
        out["gptq"] = {k: rep[k] for k in ("samples", "seq_len", "refine", "epochs", "damp", "act_order",
                                           "true_sequential", "act_weighted", "scale_fits")}
        errs = [(sum(b["err_rtn"].values()) / len(b["err_rtn"]), sum(b["err_gptq"].values()) / len(b["err_gptq"]))
                for b in rep["blocks"]]
        out["gptq"]["block_rel_output_error_rtn_vs_gptq"] = errs
    elif rep and "blocks" in rep:
        out["two_step"] = {k: rep[k] for k in ("samples", "seq_len", "epochs", "lr", "lam", "batch_size")}
        out["two_step"]["block_loss"] = [(b["loss_init"], b["loss_final"]) for b in rep["blocks"]]
    if hasattr(model, "quantization_report"):
        sq = [x.sqnr_db for x in model.quantization_report]
        out["mean_weight_sqnr_db"] = sum(sq) / len(sq)
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def environment(args) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": args.device, "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "backend": args.backend}
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    try:
        import hqq

        env["hqq"] = getattr(hqq, "__version__", "installed")
    except ImportError:
        env["hqq"] = None
    return env


def write_markdown(path: Path, results: list[dict], meta: dict) -> None:
    cols = [f"{b}-bit g{g}" for b, g in CONFIGS]
    lines = ["# Quality ladder: SmolLM2-135M, WikiText-2 raw test perplexity", "",
             f"Window {meta['window']} tokens, {meta['windows']} windows ({meta['tokens']} scored tokens"
             f"{', truncated by --max-windows' if meta['max_windows'] else ''}); lower is better.", "",
             "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    by = {(r["row"], r["bits"], r["group_size"]): r for r in results}
    fp = by.get(("fp", None, None))
    if fp:
        lines.append(f"| {LABELS['fp']} | " + " | ".join(f"{fp['ppl']:.2f}" for _ in cols) + " |")
    for row in ROWS[1:]:
        cells = [by.get((row, b, g)) for b, g in CONFIGS]
        if any(cells):
            lines.append(f"| {LABELS[row]} | " + " | ".join("—" if c is None else f"{c['ppl']:.2f}" for c in cells) + " |")
    pairs = [(i, q) for i, q in PAIRS if any(by.get((i, b, g)) and by.get((q, b, g)) for b, g in CONFIGS)]
    if pairs:  # the like-for-like twins side by side
        lines += ["", "Like-for-like pairs (same GPTQ path and settings; PoT ÷ int perplexity, < 1: PoT wins):", "",
                  "| pair | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for i, q in pairs:
            cells = [(by.get((i, b, g)), by.get((q, b, g))) for b, g in CONFIGS]
            lines.append(f"| {LABELS[q]} ÷ {LABELS[i]} | " + " | ".join(
                f"{y['ppl']:.4g} ÷ {x['ppl']:.4g} = {y['ppl'] / x['ppl']:.2f}" if x and y else "—" for x, y in cells) + " |")
    lines += ["", "Command(s):", "", *[f"    {c}" for c in meta["commands"]], "",
              "Environment: " + ", ".join(f"{k} {v}" for k, v in meta["environment"].items()), "",
              f"Two-step settings: {meta['two_step']}. Calibration text: {meta['calib']}.", "",
              "Notes: the offline SmolLM2-135M weights were shipped as GGUF Q4_1 and dequantized to fp32, so",
              "they already sit on a 4-bit grid (4-bit rows are flattered). RTN int is asymmetric min/max with",
              "a uint8 zero point; HQQ int keeps a float zero point (optimize=True, no calibration data).",
              "\"PoT step 1\" / \"PoT two-step\" are the paper's (data-free weight-space search, then Γ);",
              "the \"activation-weighted\" rows weight step 1's search by each input channel's mean x² on the",
              "calibration windows (calibration/refine.py explains why PoT needs it), alone or under step 2.",
              "\"int GPTQ\" / \"PoT GPTQ\" (calibration/gptq.py): scales fixed first (int: static min/max; PoT:",
              "activation-weighted step 1), then GPTQ's column-by-column rounding with error feedback through the",
              "inverse Hessian (act-order, 1 % damping, lazy batches of 128, Hessians block by block on the quantized",
              "model's own activations); PoT rounds to the nearest level in value. Then `scale_fits` rounds (in",
              "ladder.json per row) of least-squares scale refits to the codes under H + GPTQ again, the same for",
              "both kinds (int: zero points kept). \"+ frozen-code refine\": step 2 afterwards with",
              "the GPTQ codes frozen (PoT: E and sign; int: q and the zero point), only Γ (one per group scale)",
              "learns.",
              "All PoT/int rows store b + 16/G bits per weight (+ 8/G for the int zero point); lm_head stays float."]
    if meta.get("note"):
        lines += ["", meta["note"]]
    path.write_text("\n".join(lines) + "\n")


def merge(paths: list[Path], out_dir: Path, note: str | None = None, name: str = "ladder") -> None:
    """Join the rows of several ``ladder.json`` files made with the same window settings (e.g. two
    processes each running some configs) into ``out_dir``'s ``name``.json / ``name``.md."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    keys = {(m["window"], m["max_windows"]) for m in parts}
    if len(keys) != 1:
        raise SystemExit(f"--merge: the files differ in window / max-windows: {sorted(keys)}")
    meta = {k: v for k, v in parts[0].items() if k != "results"}
    meta["commands"] = [c for m in parts for c in m["commands"]]
    meta["peak_rss_mib"] = max(m["peak_rss_mib"] for m in parts)
    results = [r for m in parts for r in m["results"]]
    if note:
        meta["note"] = note
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({**meta, "results": results}, indent=1))
    write_markdown(out_dir / f"{name}.md", results, meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--text", default=str(DATA / "wikitext-2-raw" / "wiki.test.raw"))
    p.add_argument("--calib", default=str(DATA / "wikitext-2" / "valid.txt"))
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--eval-batch", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--configs", nargs="+", default=[f"{b}:{g}" for b, g in CONFIGS],
                   help="bits:group pairs, default 4:128 3:128 2:128 2:64")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=10, help="two-step epochs at 3 and 4 bits (paper: 10)")
    p.add_argument("--epochs-2bit", type=int, default=40, help="two-step epochs at 2 bits (paper: 40)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--refine-epochs", type=int, default=4,
                   help="gptq-int-refine / pot-gptq-refine: Γ epochs with the codes frozen")
    p.add_argument("--scale-fits", type=int, default=DEFAULT_SCALE_FITS,
                   help="GPTQ rows: least-squares scale refit + GPTQ rounds per linear")
    p.add_argument("--backend", choices=("decoded", "torch", "triton", "auto"), default="decoded",
                   help="matmul of the packed layers: 'decoded' (reference decode once, then nn.Linear: the "
                        "same numbers as 'torch', faster on a CPU), 'torch' (reference decode + fp32 matmul "
                        "every forward, the quality reference), 'triton' (the kernels), 'auto' (the op's default)")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument("--name", default="ladder", help="file stem of the results in --results (NAME.json, NAME.md)")
    p.add_argument("--resume", action="store_true", help="keep rows already in NAME.json and skip them")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="only join these ladder.json files into --results (no evaluation)")
    p.add_argument("--note", default=None, help="with --merge: a paragraph appended to ladder.md (e.g. what was run)")
    args = p.parse_args(argv)
    if args.merge:
        merge([Path(x) for x in args.merge], Path(args.results), args.note, args.name)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    configs = []
    for c in args.configs:
        b, g = (int(x) for x in c.split(":"))
        PoTConfig(b, g)  # validate early
        configs.append((b, g))
    if "hqq-int" in args.rows:
        try:
            import hqq.core.quantize  # noqa: F401
        except ImportError:
            p.error("row hqq-int needs the hqq package: DISABLE_CUDA=1 pip install --no-deps hqq einops termcolor")

    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{args.name}.json", out_dir / f"{args.name}.md"
    old = json.loads(json_path.read_text()) if args.resume and json_path.is_file() else {}
    if old and (old.get("window"), old.get("max_windows")) != (args.window, args.max_windows):
        p.error(f"--resume: {json_path} was made with window {old.get('window')}, max-windows "
                f"{old.get('max_windows')}; rerun without --resume or with the same settings")
    results: list[dict] = old.get("results", [])
    done = {(r["row"], r["bits"], r["group_size"]) for r in results}
    commands = old.get("commands", []) + ["python " + " ".join(sys.argv if argv is None else ["bench/ladder.py", *argv])]

    _, tok = load_model(args.model, device="cpu")
    eval_ids = tokenize_text(read_text(args.text), tok)
    calib_ids = None
    if CALIB_ROWS & set(args.rows):
        calib_ids = get_calibration_ids(args.calib, tok, args.samples, args.seq_len, seed=0)

    plan = [("fp", None, None)] if "fp" in args.rows else []
    plan += [(r, b, g) for b, g in configs for r in args.rows if r != "fp"]
    t_all = time.perf_counter()
    for i, (row, b, g) in enumerate(plan):
        if (row, b, g) in done:
            print(f"[{i + 1}/{len(plan)}] {row} {b}-bit g{g}: already in {json_path}, skipped", flush=True)
            continue
        print(f"[{i + 1}/{len(plan)}] {row}" + ("" if b is None else f" {b}-bit g{g}") + " …", flush=True)
        r = run_row(row, b, g, args, eval_ids, calib_ids)
        print(f"    ppl {r['ppl']:.3f}  (quantize {r['quantize_seconds']:.1f} s, eval {r['eval_seconds']:.1f} s)",
              flush=True)
        results.append(r)
        meta = {"window": r["window"], "windows": r["windows"], "tokens": r["tokens"], "max_windows": args.max_windows,
                "commands": commands, "environment": environment(args), "calib": args.calib,
                "two_step": {"samples": args.samples, "seq_len": args.seq_len, "epochs": args.epochs,
                             "epochs_2bit": args.epochs_2bit, "lr": args.lr, "lam": args.lam,
                             "batch_size": args.batch_size, "refine_epochs": args.refine_epochs,
                             "scale_fits": args.scale_fits},
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if args.device.startswith("cuda"):
            meta["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        json_path.write_text(json.dumps({**meta, "results": results}, indent=1))
        write_markdown(md_path, results, meta)
    print(f"done in {time.perf_counter() - t_all:.0f} s → {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

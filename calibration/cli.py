"""Command line: ``python -m calibration quantize …`` and ``python -m calibration eval …``.

Both print progress on stderr and, with ``--json``, one machine-readable object as the last
line of stdout (results, seconds, peak RSS, and peak CUDA memory when on a GPU).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from potkernels.format.config import INT_BITS, POT_BITS, IntConfig, PoTConfig

from .calibrate import (DATA_METHODS, DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LAM, DEFAULT_LR, METHODS, calibrate_model,
                        check_method)
from .data import get_calibration_ids
from .eval import default_window, perplexity, read_text, tokenize_text
from .gptq import DEFAULT_DAMP

# Default calibration set: 32 windows of 256 tokens (with DEFAULT_EPOCHS/BATCH: 64 Adam steps
# per block), sized for the 2-core CPU budget; on a GPU use e.g. --samples 128 --seq-len 2048.
DEFAULT_SAMPLES = 32
DEFAULT_SEQ_LEN = 256
# GPTQ's Hessians need ≥ 16 k tokens (with 4 k, SmolLM2's 1536-input down_proj overfits).
DEFAULT_SEQ_LEN_GPTQ = 512


def model_context(model) -> Optional[int]:
    """The model's context length (``max_position_embeddings`` / ``n_positions``), if it declares one."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if n else None


class CliError(Exception):
    """A user-facing error: printed as ``error: …`` with exit status 1, no traceback."""


def memory_stats() -> dict[str, Optional[float]]:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated GPU memory (MiB)."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mib": rss_kib / 1024, "cuda_max_allocated_mib": cuda}


def parse_group_size(text: str) -> Optional[int]:
    if text.lower() in ("none", "channel", "per-channel"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"group size must be an integer or 'channel', got {text!r}") from None


def build_config(kind: str, bits: int, group_size: Optional[int]) -> PoTConfig | IntConfig:
    try:
        return PoTConfig(bits, group_size) if kind == "pot" else IntConfig(bits, group_size)
    except ValueError as e:
        raise CliError(str(e)) from None


def check_calib_source(source: str) -> None:
    """Fail before loading any model when a calibration file is missing or empty."""
    if source in ("wikitext2", "self"):
        return
    path = Path(source)
    if not path.is_file():
        raise CliError(f"--calib {source!r} is neither 'wikitext2', 'self' nor an existing text file")
    if not read_text(path).strip():
        raise CliError(f"--calib file {source} is empty")


def load_base(spec: str, device: str):
    """A float model and tokenizer from ``smollm2``, a local folder or a hub id."""
    from potkernels.models import load_model

    try:
        return load_model(spec, device=device)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise CliError(str(e)) from None


def save_checkpoint(model, tokenizer, out: str | Path) -> None:
    """Write the quantized model so that ``potkernels.load_quantized(out)`` reloads it."""
    from potkernels import save_quantized

    save_quantized(model, str(out), tokenizer=tokenizer)


def load_any(spec: str, device: str):
    """``(model, tokenizer)`` from a quantized checkpoint folder, or a plain/hub/smollm2 model."""
    from potkernels import load_quantized
    from potkernels.integrations.serialization import QUANT_FILE, CheckpointError

    path = Path(spec)
    if path.is_dir() and (path / QUANT_FILE).is_file():
        try:
            model = load_quantized(str(path), device=device)
        except (CheckpointError, FileNotFoundError, OSError) as e:
            raise CliError(f"could not load the quantized checkpoint {spec}: {e}") from None
        from transformers import AutoTokenizer

        return model, AutoTokenizer.from_pretrained(str(path))
    return load_base(spec, device)


def evaluate_text(model, tokenizer, text_path: str, window: Optional[int], max_windows: Optional[int],
                  batch_size: int = 1) -> dict[str, Any]:
    window = window or default_window(model)
    try:
        ids = tokenize_text(read_text(text_path), tokenizer)
        t0 = time.perf_counter()
        r = perplexity(model, ids, window, max_windows=max_windows, batch_size=batch_size, progress=True)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    return {"perplexity": r["ppl"], "nll": r["nll"], "window": window, "windows": r["windows"],
            "tokens": r["tokens"], "eval_seconds": time.perf_counter() - t0}


def cmd_quantize(args: argparse.Namespace) -> dict[str, Any]:
    cfg = build_config(args.kind, args.bits, args.group_size)
    try:
        check_method(cfg, args.method)
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.act_weighted is None:
        args.act_weighted = args.method in DATA_METHODS and args.kind == "pot"
    if args.act_weighted and args.method == "rtn":
        raise CliError("--act-weighted weights the step-1 search; use it with --method init, two-step or gptq")
    if args.act_weighted and args.kind == "int":
        raise CliError("--act-weighted weights the PoT step-1 search; int GPTQ uses min/max scales")
    if args.refine and args.method != "gptq":
        raise CliError("--refine (step 2 with the GPTQ codes frozen) needs --method gptq; "
                       "--method two-step is step 1 + step 2")
    needs_data = args.method in DATA_METHODS or args.act_weighted
    if args.seq_len is None:
        args.seq_len = DEFAULT_SEQ_LEN_GPTQ if args.method == "gptq" else DEFAULT_SEQ_LEN
    if needs_data:
        check_calib_source(args.calib)
    elif args.calib_given:
        hint = " (add --act-weighted to weight step 1 by its activations)" if args.method == "init" else ""
        print(f"note: --method {args.method} is data-free; --calib {args.calib} is not used{hint}", file=sys.stderr)
    t_start = time.perf_counter()
    model, tok = load_base(args.model, args.device)
    ids = None
    context = model_context(model)
    if needs_data and context is not None and args.seq_len > context:
        print(f"note: --seq-len {args.seq_len} is longer than the model's context ({context} tokens); "
              f"calibrating on windows of {context}", file=sys.stderr)
        args.seq_len = context
    if needs_data:
        try:
            ids = get_calibration_ids(args.calib, tok, args.samples, args.seq_len, seed=args.seed, model=model)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise CliError(str(e)) from None
    fp_eval = None
    if args.eval_text and args.eval_fp:  # the "before" row, on the very same windows
        fp_eval = evaluate_text(model, tok, args.eval_text, args.window, args.max_windows)
        print(f"float model: perplexity {fp_eval['perplexity']:.3f}", file=sys.stderr)
    t0 = time.perf_counter()
    calibrate_model(model, cfg, ids, args.method, epochs=args.epochs, lr=args.lr, lam=args.lam,
                    batch_size=args.batch_size, device=args.device, progress=True, seed=args.seed,
                    act_weighted=args.act_weighted, refine=args.refine, damp=args.damp)
    calib_seconds = time.perf_counter() - t0
    report = model.calibration_report
    print(report["summary"], file=sys.stderr)
    for b in report.get("blocks", []) if args.method != "gptq" else []:
        sq0 = sum(b["sqnr_init_db"].values()) / len(b["sqnr_init_db"])
        sq1 = sum(b["sqnr_final_db"].values()) / len(b["sqnr_final_db"])
        print(f"block {b['index']:3d}: output MSE {b['loss_init']:.4g} -> {b['loss_final']:.4g}, "
              f"mean weight SQNR {sq0:.2f} -> {sq1:.2f} dB ({b['seconds']:.1f} s)", file=sys.stderr)
    result: dict[str, Any] = {
        "command": "quantize", "model": args.model, "config": cfg.to_dict(), "method": args.method,
        "act_weighted": args.act_weighted, "refine": args.refine,
        "calib": args.calib if ids is not None else None,
        "samples": None if ids is None else ids.shape[0], "seq_len": None if ids is None else ids.shape[1],
        "epochs": report.get("epochs"), "lr": args.lr, "lam": args.lam,
        "device": str(args.device), "threads": torch.get_num_threads(),
        "calibration_seconds": calib_seconds, "summary": report["summary"],
    }
    if args.report:
        layers = [r.to_dict() for r in model.quantization_report]
        Path(args.report).write_text(json.dumps({**report, "layers": layers}, indent=1))
        result["report"] = str(args.report)
    if args.eval_text:
        result.update(evaluate_text(model, tok, args.eval_text, args.window, args.max_windows))
        print(f"quantized model: perplexity {result['perplexity']:.3f}", file=sys.stderr)
        if fp_eval is not None:
            result["perplexity_fp"] = fp_eval["perplexity"]
    if args.out:
        save_checkpoint(model, tok, args.out)
        result["out"] = str(args.out)
    result["seconds"] = time.perf_counter() - t_start
    return result


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    model, tok = load_any(args.model, args.device)
    result = {"command": "eval", "model": args.model, "text": args.text, "device": str(args.device),
              "quantization": getattr(getattr(model, "quantization_config", None), "to_dict", lambda: None)()}
    result.update(evaluate_text(model, tok, args.text, args.window, args.max_windows, args.batch_size))
    result["seconds"] = time.perf_counter() - t_start
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m calibration", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        sp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
        sp.add_argument("--window", type=int, default=None, help="perplexity window (default: model context, ≤ 2048)")
        sp.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
        sp.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")

    q = sub.add_parser("quantize", help="quantize a model (RTN, PoTPTQ step 1, step 1 + 2, or GPTQ)")
    q.add_argument("--model", default="smollm2", help="'smollm2' (offline default), a local folder or a hub id")
    q.add_argument("--kind", choices=("pot", "int"), default="pot")
    q.add_argument("--bits", type=int, default=3, help=f"PoT: {POT_BITS}; int: {INT_BITS}")
    q.add_argument("--group-size", type=parse_group_size, default=128, help="32, 64, 128, 256 or 'channel'")
    q.add_argument("--method", choices=METHODS, default="two-step",
                   help="rtn | init (PoTPTQ step 1) | two-step (step 1 + 2) | gptq (step-1 scales, then GPTQ "
                        "rounding; also for --kind int)")
    q.add_argument("--act-weighted", action=argparse.BooleanOptionalAction, default=None,
                   help="step 1 weights each input column's error by its mean x² on the calibration data "
                        "(default: on for two-step, off for init; --no-act-weighted gives the paper's "
                        "data-free step 1, which collapses SmolLM2 at 3 bits)")
    q.add_argument("--refine", action="store_true",
                   help="gptq: afterwards PoTPTQ step 2 with the GPTQ codes frozen (only the scales learn)")
    q.add_argument("--damp", type=float, default=DEFAULT_DAMP, help="gptq: damping, fraction of mean diag(H)")
    q.add_argument("--calib", default=None,
                   help="'wikitext2', 'self' or a text file (default: wikitext2; data methods only)")
    q.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    q.add_argument("--seq-len", type=int, default=None,
                   help=f"calibration window (default: {DEFAULT_SEQ_LEN_GPTQ} for gptq, {DEFAULT_SEQ_LEN} otherwise; "
                        "clamped to the model's context)")
    q.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    q.add_argument("--lr", type=float, default=DEFAULT_LR)
    q.add_argument("--lam", type=float, default=DEFAULT_LAM)
    q.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default=None, help="checkpoint folder (reload with potkernels.load_quantized)")
    q.add_argument("--eval-text", default=None, help="also report perplexity on this text file")
    q.add_argument("--eval-fp", action=argparse.BooleanOptionalAction, default=True,
                   help="with --eval-text, also score the float model first (the 'before' perplexity)")
    q.add_argument("--report", default=None,
                   help="write the full calibration report (per block: loss, per-layer SQNR step 1 vs final) as JSON")
    common(q)

    e = sub.add_parser("eval", help="perplexity of a quantized checkpoint or a float model on a text file")
    e.add_argument("model", help="a quantized checkpoint folder, a model folder, a hub id or 'smollm2'")
    e.add_argument("--text", required=True, help="text file, e.g. ../shared/data/wikitext-2-raw/wiki.test.raw")
    e.add_argument("--batch-size", type=int, default=1)
    common(e)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "quantize":
        args.calib_given = args.calib is not None
        args.calib = args.calib or "wikitext2"
    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "samples", 1) < 1 or (getattr(args, "seq_len", None) or 2) < 2 or getattr(args, "epochs", 0) < 0:
        parser.error("--samples must be ≥ 1, --seq-len ≥ 2, --epochs ≥ 0")
    if args.window is not None and args.window < 2:
        parser.error("--window must be ≥ 2")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    try:
        result = cmd_quantize(args) if args.command == "quantize" else cmd_eval(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result.update(memory_stats())
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0

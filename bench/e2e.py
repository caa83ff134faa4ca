"""End-to-end greedy decoding speed: tokens/s of fp16 vs PoT 4/3/2-bit vs int4, batch 1 and 16.

The float model is built once — Llama-3-8B-shaped (all 32 layers by default, random weights,
built directly on the GPU in fp16: no host copy) or SmolLM2-135M (offline copy) — and each
quantized variant is a copy of it quantized layer by layer in place (peak GPU memory ≈ 2× the
fp16 model + one packed copy; 8B: ~37 GB). Each (variant, batch) prefills a random prompt into a
transformers ``StaticCache`` and times ``--new-tokens`` greedy decode steps; with ``--mode graph``
(default on CUDA) one step (forward → argmax → feed back) is captured in a CUDA graph and
replayed, so launch overhead does not hide the kernels; ``--mode compile`` uses
``torch.compile(mode="reduce-overhead")`` instead. Per-phase wall times are printed and stored
(build, quantize, prefill incl. Triton compiles, warm-up, capture, timed decode), and
``--budget-s`` skips the variants that would not finish in time (the estimate is the slowest
variant so far), so a run fits a fixed GPU slot (``bench/gpu_check.sh`` has 8 minutes).

    python bench/e2e.py --model llama8b --budget-s 300             # GPU, 32 layers
    python bench/e2e.py --model smollm2 --budget-s 120
    python bench/e2e.py --dry-run                                  # tiny model on the CPU, seconds
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import platform
import time
import warnings
from pathlib import Path

import torch

import potkernels
from potkernels.models import load_model

VARIANTS = {
    "fp16": None,
    "pot4": potkernels.PoTConfig(4, 128),
    "pot3": potkernels.PoTConfig(3, 128),
    "pot2": potkernels.PoTConfig(2, 128),
    "int4": potkernels.IntConfig(4, 128),
}


def build_model(name: str, layers: int | None, device: str, dtype: torch.dtype):
    """The float model, built on ``device`` in ``dtype`` (random weights for the Llama shapes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name == "smollm2":
        model, _ = load_model("smollm2", dtype=dtype, device=device)
        return model.eval()
    if name == "llama8b":  # Llama-3-8B layer shapes, random weights (only speed is measured)
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                          num_hidden_layers=layers or 32, vocab_size=128256, max_position_embeddings=4096)
    elif name == "tiny":
        cfg = LlamaConfig(hidden_size=256, intermediate_size=640, num_attention_heads=4, num_key_value_heads=2,
                          num_hidden_layers=layers or 2, vocab_size=1000)
    else:
        raise ValueError(f"unknown model {name!r}: smollm2, llama8b or tiny")
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):  # parameters are created (and initialized) on the device
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_decode(model, batch: int, prompt_len: int, new_tokens: int, mode: str) -> dict:
    """Prefill a random prompt, then time ``new_tokens`` greedy steps; per-phase seconds included."""
    from transformers import StaticCache

    device = next(model.parameters()).device
    phases: dict[str, float] = {}
    t = time.perf_counter()
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens + 8)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=device)
    logits = model(prompt, past_key_values=cache, cache_position=torch.arange(prompt_len, device=device),
                   use_cache=True).logits
    ids = logits[:, -1:].argmax(-1)
    step_pos = torch.tensor([prompt_len], device=device)
    _sync(device)
    phases["prefill_s"] = time.perf_counter() - t  # the first one includes Triton compiles

    forward = model.forward
    if mode == "compile":
        forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)

    def step():
        out = forward(ids, past_key_values=cache, cache_position=step_pos, use_cache=True).logits
        ids.copy_(out[:, -1:].argmax(-1))
        step_pos.add_(1)

    t = time.perf_counter()
    run, used = step, ("eager" if mode == "graph" and device.type != "cuda" else mode)
    if used == "graph":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: lazy allocations, Triton compiles of the M = batch kernels
                step()
        torch.cuda.current_stream().wait_stream(stream)
        _sync(device)
        phases["warmup_s"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            run = graph.replay
        except Exception as e:  # noqa: BLE001 - report and fall back to eager
            print(f"  CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); timing eager")
            used = "eager (graph capture failed)"
        _sync(device)
        phases["capture_s"] = time.perf_counter() - t
    else:
        for _ in range(3):
            step()
        _sync(device)
        phases["warmup_s"] = time.perf_counter() - t
    step_pos.fill_(prompt_len)  # keep every timed position inside the cache
    _sync(device)
    t = time.perf_counter()
    for _ in range(new_tokens):
        run()
    _sync(device)
    dt = time.perf_counter() - t
    phases["decode_s"] = dt
    return {"mode": used, "seconds": dt, "tokens_per_s": batch * new_tokens / dt,
            "ms_per_step": 1e3 * dt / new_tokens, "phases": phases}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama8b", choices=["smollm2", "llama8b", "tiny"],
                    help="model (default: %(default)s)")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (llama8b/tiny); default: full depth")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of %(default)s")
    ap.add_argument("--batches", default="1,16", help="(default: %(default)s)")
    ap.add_argument("--prompt-len", type=int, default=32, help="(default: %(default)s)")
    ap.add_argument("--new-tokens", type=int, default=64, help="timed decode steps (default: %(default)s)")
    ap.add_argument("--mode", choices=["graph", "compile", "eager"], default="graph",
                    help="graph: CUDA-graph replay of one step; compile: torch.compile reduce-overhead "
                         "(default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip variants that would end past this many seconds from the start")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny 2-layer model on the CPU, 4 tokens, batches 1,2: checks the script end to end")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/<device>/e2e_<model>.json)")
    args = ap.parse_args(argv)
    if args.dry_run:  # tiny CPU settings, except what was given on the command line
        args.model, args.device = "tiny", "cpu"
        for name, value in (("new_tokens", 4), ("batches", "1,2"), ("prompt_len", 8)):
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
        args.out = args.out or "bench/out/e2e_tiny_dry_run.json"  # ignored by git
    # transformers ≥ 5.2x renamed past_key_values → cache; the old name works across versions
    warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    batches = [int(b) for b in args.batches.split(",")]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available (use --dry-run or --device cpu)")
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    slug = dev_name.replace(" ", "_").replace("/", "_") if args.device.startswith("cuda") else "cpu"
    out = Path(args.out or f"bench/results/{slug}/e2e_{args.model}.json")

    start = time.perf_counter()
    dtype = torch.float16 if args.device != "cpu" else torch.float32  # CPU matmul has no fast fp16
    base = build_model(args.model, args.layers, args.device, dtype)
    _sync(torch.device(args.device))
    build_s = time.perf_counter() - start
    n_params = sum(p.numel() for p in base.parameters())
    print(f"built {args.model} ({n_params / 1e9:.2f} B params, {dtype}) on {args.device} in {build_s:.1f} s", flush=True)

    rows, skipped, slowest = [], [], 0.0
    for variant in variants:
        elapsed = time.perf_counter() - start
        if args.budget_s is not None and elapsed + slowest > args.budget_s:
            print(f"  skip {variant}: {elapsed:.0f} s + ~{slowest:.0f} s would pass the {args.budget_s:.0f} s budget")
            skipped.append(variant)
            continue
        t0 = time.perf_counter()
        cfg = VARIANTS[variant]
        if cfg is None:
            model, quant_s = base, 0.0
        else:
            model = copy.deepcopy(base)
            potkernels.quantize_model(model, cfg)  # layer by layer, in place, on the device
            _sync(torch.device(args.device))
            quant_s = time.perf_counter() - t0
        for b in batches:
            r = time_decode(model, b, args.prompt_len, args.new_tokens, args.mode)
            r.update(variant=variant, batch=b)
            r["phases"]["quantize_s"] = quant_s
            rows.append(r)
            ph = " ".join(f"{k[:-2]} {v:.1f}s" for k, v in r["phases"].items())
            print(f"{args.model:8s} {variant:5s} batch {b:3d}: {r['tokens_per_s']:9.1f} tok/s "
                  f"({r['ms_per_step']:.2f} ms/step, {r['mode']}) | {ph}", flush=True)
        if model is not base:
            del model
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        slowest = max(slowest, time.perf_counter() - t0)
    fp16 = {r["batch"]: r["tokens_per_s"] for r in rows if r["variant"] == "fp16"}
    for r in rows:
        if r["batch"] in fp16:
            r["speedup_vs_fp16"] = r["tokens_per_s"] / fp16[r["batch"]]
    total = time.perf_counter() - start
    meta = {"model": args.model, "layers": args.layers or base.config.num_hidden_layers, "params": n_params,
            "device": dev_name, "torch": torch.__version__, "triton": __import__("triton").__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "mode": args.mode, "build_s": build_s, "total_s": total,
            "skipped": skipped, "dry_run": args.dry_run}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    tmp.replace(out)
    print(f"total {total:.1f} s; wrote {out}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()

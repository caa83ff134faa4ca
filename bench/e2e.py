"""End-to-end greedy decoding speed: tokens/s of fp16 vs PoT 4/3/2-bit vs int4, batch 1 and 16.

Each variant prefills a random prompt into a transformers ``StaticCache`` and then times
``--new-tokens`` decode steps. On CUDA one decode step (forward → argmax → feed back) is
captured in a CUDA graph and replayed, so launch overhead does not hide the kernels; where
capture fails the eager loop is timed instead and the row says so.

    python bench/e2e.py --model smollm2 --device cuda
    python bench/e2e.py --model llama8b --layers 32 --device cuda
    python bench/e2e.py --model tiny --device cpu          # smoke test on a CPU
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import time
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
    from transformers import LlamaConfig, LlamaForCausalLM

    if name == "smollm2":
        model, _ = load_model("smollm2", dtype=torch.float32, device="cpu")
        return model.to(device=device, dtype=dtype).eval()
    if name == "llama8b":  # Llama-3-8B layer shapes, random weights (only speed is measured)
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                          num_hidden_layers=layers or 32, vocab_size=128256, max_position_embeddings=4096)
    elif name == "tiny":
        cfg = LlamaConfig(hidden_size=256, intermediate_size=640, num_attention_heads=4, num_key_value_heads=2,
                          num_hidden_layers=layers or 2, vocab_size=1000)
    else:
        raise ValueError(f"unknown model {name!r}: smollm2, llama8b or tiny")
    with torch.device(device):
        torch.set_default_dtype(dtype)
        model = LlamaForCausalLM(cfg)
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


@torch.no_grad()
def time_decode(model, batch: int, prompt_len: int, new_tokens: int, use_graph: bool) -> dict:
    from transformers import StaticCache

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens + 8)
    prompt = torch.randint(0, vocab, (batch, prompt_len), device=device)
    pos = torch.arange(prompt_len, device=device)
    logits = model(prompt, past_key_values=cache, cache_position=pos, use_cache=True).logits
    ids = logits[:, -1:].argmax(-1)
    step_pos = torch.tensor([prompt_len], device=device)

    def step():
        out = model(ids, past_key_values=cache, cache_position=step_pos, use_cache=True).logits
        ids.copy_(out[:, -1:].argmax(-1))
        step_pos.add_(1)

    mode = "eager"
    if use_graph and device.type == "cuda":
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):  # warm-up: lazy cache allocation, Triton compilation
                    step()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            run, mode = graph.replay, "cuda-graph"
        except Exception as e:  # noqa: BLE001 - report and fall back to eager
            print(f"  CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); timing eager")
            torch.cuda.synchronize()
            run = step
    else:
        run = step
        for _ in range(2):
            step()
    # keep the position inside the cache: rewind before timing
    step_pos.fill_(prompt_len)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"mode": mode, "seconds": dt, "tokens_per_s": batch * new_tokens / dt, "ms_per_step": 1e3 * dt / new_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "llama8b", "tiny"])
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (llama8b/tiny); default full depth")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--no-graph", action="store_true", help="time the eager loop even on CUDA")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/<device>/e2e_<model>.json)")
    args = ap.parse_args()

    dtype = torch.float16 if args.device != "cpu" else torch.float32
    rows = []
    for variant in args.variants.split(","):
        model = build_model(args.model, args.layers, args.device, dtype)
        cfg = VARIANTS[variant]
        if cfg is not None:
            potkernels.quantize_model(model, cfg)
        for b in map(int, args.batches.split(",")):
            r = time_decode(model, b, args.prompt_len, args.new_tokens, not args.no_graph)
            r.update(variant=variant, batch=b)
            rows.append(r)
            print(f"{args.model:8s} {variant:5s} batch {b:3d}: {r['tokens_per_s']:9.1f} tok/s "
                  f"({r['ms_per_step']:.2f} ms/step, {r['mode']})", flush=True)
        del model
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    base = {(r["batch"]): r["tokens_per_s"] for r in rows if r["variant"] == "fp16"}
    for r in rows:
        if r["batch"] in base:
            r["speedup_vs_fp16"] = r["tokens_per_s"] / base[r["batch"]]
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    meta = {"model": args.model, "layers": args.layers, "device": dev_name, "torch": torch.__version__,
            "triton": __import__("triton").__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    slug = dev_name.replace(" ", "_").replace("/", "_") if args.device == "cuda" else "cpu"
    out = Path(args.out or f"bench/results/{slug}/e2e_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""CPU greedy generation: float model vs packed PoT model, with and without the decoded-weight cache.

    python bench/cpu_generate.py [--model smollm2|random] [--bits 4] [--group-size 128] [--new-tokens 16]

A CPU has no decode kernel, so the packed layers' reference path decodes every weight at every
forward, i.e. at every generated token. ``potkernels.integrations.cache_decoded_weights(model)``
decodes once and keeps the weight (memory: one decoded copy of every quantized linear in the
activation dtype). Prints seconds per generation and whether the tokens are identical; writes JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import time

import torch

from _common import HelpFormatter, metadata, results_dir

import potkernels as pk
from potkernels.integrations import cache_decoded_weights


def build(name: str):
    if name == "smollm2":
        from potkernels.models import load_model

        model, _ = load_model("smollm2")
        return model
    from transformers import LlamaConfig, LlamaForCausalLM  # SmolLM2-135M's shapes, random weights

    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def timed_generate(model, ids, new_tokens: int):
    t = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    ap.add_argument("--model", choices=("smollm2", "random"), default="smollm2",
                    help="the offline SmolLM2-135M, or a random model of its shapes (no load time)")
    ap.add_argument("--bits", type=int, default=4, help="PoT code width")
    ap.add_argument("--group-size", type=int, default=128, help="PoT group size")
    ap.add_argument("--new-tokens", type=int, default=16, help="tokens generated per run")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--no-uncached", action="store_true", help="skip the slow run without the cache")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp = build(args.model)
    q = pk.quantize_model(copy.deepcopy(fp), pk.PoTConfig(args.bits, args.group_size))
    ids = torch.randint(100, 1000, (1, 8))
    timed_generate(fp, ids, 2)  # warm-up
    res: dict = {"model": args.model, "bits": args.bits, "group_size": args.group_size, "new_tokens": args.new_tokens,
                 "threads": args.threads}
    res["float_s"], ref = timed_generate(fp, ids, args.new_tokens)
    uncached = None
    if not args.no_uncached:
        res["packed_s"], uncached = timed_generate(q, ids, args.new_tokens)
    n = cache_decoded_weights(q)
    res["packed_cached_first_s"], first = timed_generate(q, ids, args.new_tokens)  # includes the one decode
    res["packed_cached_s"], out = timed_generate(q, ids, args.new_tokens)
    res["float_again_s"], _ = timed_generate(fp, ids, args.new_tokens)
    res["cached_tokens_equal_uncached"] = torch.equal(first, out) and (uncached is None or torch.equal(out, uncached))
    res["cached_tokens_equal_float"] = torch.equal(out, ref)  # informative: quantization changes tokens
    layers = [m for m in q.modules() if getattr(m, "cache_decoded", False)]
    res["cached_layers"] = n
    res["cache_bytes"] = sum(m._decoded.numel() * m._decoded.element_size() for m in layers)
    res["packed_bytes"] = sum(m.packed.nbytes for m in layers)
    res["ratio_cached_vs_float"] = res["packed_cached_s"] / min(res["float_s"], res["float_again_s"])
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for k, v in res.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    out_path = results_dir(torch.device("cpu")) / f"cpu_generate_{args.model}.json"
    out_path.write_text(json.dumps({"meta": metadata(torch.device("cpu")), **res}, indent=1) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()

"""A tiny random Llama quantized to a potkernels checkpoint, shaped for vLLM's CPU backend.

head_dim 64 (a size vLLM's CPU attention supports), 4 query / 2 KV heads (TP = 2 splits them), and
an intermediate size of 352: ``down_proj`` has K = 352 = 2·128 + 96 (a partial last group), and at
TP = 2 each rank gets 176 columns, not a whole number of 32-code units (the rank reads every row).
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from potkernels.format import config_from_dict
from potkernels.integrations import quantize_model, save_quantized

VOCAB = 256


def tiny_llama_checkpoint(path: Path, kind: str = "pot", bits: int = 3, group_size: int | None = 128,
                          seed: int = 0) -> Path:
    """Write an fp32 checkpoint of a random 2-layer Llama to ``path`` (no tokenizer: prompts are token ids)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, vocab_size=VOCAB, max_position_embeddings=256,
                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=True, dtype="float32")
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the init's 0.02 std: sharper logits, fewer greedy near-ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    quantize_model(model, config_from_dict({"kind": kind, "bits": bits, "group_size": group_size}))
    return save_quantized(model, path)


PROMPT = [0, 5, 17, 33, 2, 99]


def engine_env(tp: int) -> dict[str, str]:
    """Environment for a vLLM CPU process: a small KV cache, one thread per rank on its own core
    (vLLM binds each rank to cores; on a 2-core box ranks share them), no Triton interpreter."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cores = os.cpu_count() or 1
    env.update(VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1",
               VLLM_CPU_OMP_THREADS_BIND="|".join(str(r % cores) for r in range(tp)))
    return env


def engine_args(tp: int) -> dict:
    return dict(tensor_parallel_size=tp, dtype="float32", skip_tokenizer_init=True, max_model_len=128,
                enforce_eager=True, gpu_memory_utilization=0.2, max_num_seqs=4, seed=0)


def hf_greedy(path: Path, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens from transformers' ``from_pretrained`` (potkernels quantizer, decoded-weight cache)."""
    import potkernels
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    potkernels.integrations.cache_decoded_weights(model)
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=None)
    return out[0, len(prompt):].tolist()


def _generate(path: str, tp: int, n: int) -> None:
    import json

    from vllm import LLM, SamplingParams

    llm = LLM(model=path, **engine_args(tp))
    out = llm.generate([{"prompt_token_ids": PROMPT}], SamplingParams(max_tokens=n, temperature=0, detokenize=False))
    print("TOKENS " + json.dumps(list(out[0].outputs[0].token_ids)), flush=True)


if __name__ == "__main__":  # python vllm_tiny.py CHECKPOINT TP N: greedy tokens through vLLM's LLM()
    import sys

    _generate(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

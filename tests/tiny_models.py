"""Tiny random Hugging Face models built from configs (no downloads): GPT-2 (Conv1D) and Llama (nn.Linear).

Sizes are chosen so that some in_features are not multiples of 128 (partial last groups) and the
embeddings are tied, like SmolLM2's.
"""
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB = 96


def tiny_gpt2(vocab: int = VOCAB) -> GPT2LMHeadModel:
    cfg = GPT2Config(n_embd=96, n_layer=2, n_head=4, vocab_size=vocab, n_positions=64,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(tied: bool = True) -> LlamaForCausalLM:
    cfg = LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=1, pad_token_id=None, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "llama-untied": lambda: tiny_llama(tied=False)}


def tokens(batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length))


def input_embeddings_tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight

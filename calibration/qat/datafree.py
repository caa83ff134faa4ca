"""Data-free QAT data: text sampled from the float teacher itself (the LLM-QAT recipe).

Each sequence starts from a random vocabulary token (or a given prompt) and continues by sampling
the teacher's next-token distribution; QAT then distils the teacher on its own text
(``train_qat(..., teacher=fp_model, kd_weight=1.0)``), so no training corpus is needed.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


@torch.no_grad()
def sample_from_teacher(teacher: nn.Module, n_sequences: int, length: int, *, batch_size: int = 8,
                        start_ids: Optional[torch.Tensor] = None, temperature: float = 1.0,
                        top_k: Optional[int] = None, seed: int = 0) -> torch.Tensor:
    """Sample ``n_sequences`` token sequences of ``length`` tokens from a causal LM.

    Args:
        teacher: a Hugging Face causal LM (``.generate``).
        start_ids: optional LongTensor ``[n_sequences, p]`` prompts (p < length); default one
            uniformly random token per sequence.
        temperature, top_k: sampling settings (``top_k=None``: full distribution).
        seed: makes the samples reproducible without touching the caller's RNG state.
    Returns:
        LongTensor ``[n_sequences, length]`` on the CPU.
    """
    if n_sequences <= 0 or length < 2:
        raise ValueError(f"need n_sequences > 0 and length >= 2, got {n_sequences}, {length}")
    vocab = teacher.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    if start_ids is None:
        start_ids = torch.randint(0, vocab, (n_sequences, 1), generator=gen)
    if start_ids.dim() != 2 or start_ids.shape[0] != n_sequences or start_ids.shape[1] >= length:
        raise ValueError(f"start_ids must be [n_sequences, p < length], got {tuple(start_ids.shape)}")
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    eos = teacher.config.eos_token_id
    pad = eos if isinstance(eos, int) and 0 <= eos < vocab else 0  # only pads finished rows; min_length prevents them
    out = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, n_sequences, batch_size):
            prompt = start_ids[i : i + batch_size].to(device)
            seq = teacher.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                max_length=length, min_length=length, temperature=temperature, top_k=top_k or 0, top_p=1.0,
                pad_token_id=pad,
            )
            out.append(seq[:, :length].cpu())
    teacher.train(was_training)
    return torch.cat(out)


__all__ = ["sample_from_teacher"]

"""A small causal-LM training loop: from-scratch training, and QAT with optional distillation.

``train_lm`` trains any Hugging Face causal LM (anything returning ``.logits``) on batches of
token ids with AdamW, linear warm-up + cosine decay and gradient clipping; the loss is
``(1 − kd_weight) · CE + kd_weight · T² · KL(teacher ‖ student)`` on next-token logits.
:func:`calibration.qat.train_qat` is the same loop for a model prepared with
:func:`calibration.qat.prepare_qat` (it lives there, so this module never imports ``calibration.qat``).
The Hugging Face ``Trainer`` works on QAT models as well; this loop exists for distillation,
data-free QAT and scripts that should not depend on ``Trainer``'s defaults.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

Batches = Union[Iterable[torch.Tensor], Callable[[int], torch.Tensor]]


class RandomWindows:
    """Endless batches of random ``[batch_size, block]`` windows cut from 1-D token ids (seeded)."""

    def __init__(self, ids: torch.Tensor, block: int, batch_size: int, seed: int = 0) -> None:
        if ids.dim() != 1 or ids.numel() <= block:
            raise ValueError(f"ids must be 1-D and longer than one block of {block}, got shape {tuple(ids.shape)}")
        self.ids, self.block, self.batch_size = ids, block, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            start = torch.randint(0, self.ids.numel() - self.block + 1, (self.batch_size,), generator=self.gen)
            yield torch.stack([self.ids[s : s + self.block] for s in start.tolist()])


def _batch_stream(batches: Batches) -> Iterator[torch.Tensor]:
    """Steps → batches: call a function with the step, or iterate (restarting re-iterable inputs)."""
    if callable(batches) and not isinstance(batches, Iterable):
        step = 0
        while True:
            yield batches(step)
            step += 1
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("batches yielded nothing (a one-shot iterator is exhausted: pass a list or a callable)")


def _lr_lambda(steps: int, warmup: int, min_lr_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def lm_loss(logits: torch.Tensor, ids: torch.Tensor, teacher_logits: Optional[torch.Tensor] = None,
            kd_weight: float = 0.0, kd_temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, next-token CE) for ``logits [B, T, V]`` on ``ids [B, T]``."""
    s = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    ce = F.cross_entropy(s, ids[:, 1:].reshape(-1))
    if teacher_logits is None or kd_weight == 0.0:
        return ce, ce
    t = teacher_logits[:, :-1].reshape(-1, teacher_logits.shape[-1]).float()
    temp = kd_temperature
    kd = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                  reduction="batchmean") * temp**2
    return (1.0 - kd_weight) * ce + kd_weight * kd, ce


def train_lm(model: nn.Module, batches: Batches, steps: int, lr: float, *, teacher: Optional[nn.Module] = None,
             kd_weight: float = 0.0, kd_temperature: float = 1.0, param_groups: Optional[list[dict]] = None,
             weight_decay: float = 0.0, warmup: int = 0, min_lr_ratio: float = 0.1, grad_clip: float | None = 1.0,
             autocast_dtype: Optional[torch.dtype] = None, log_every: int = 0,
             log: Callable[[str], None] = print) -> dict:
    """Train ``model`` for ``steps`` optimizer steps; returns the history.

    Args:
        model: a causal LM whose forward takes ``input_ids`` and returns ``.logits [B, T, V]``.
        batches: LongTensor ``[B, T]`` batches — a list (cycled), an endless iterable (e.g.
            :class:`RandomWindows`) or a function ``step -> batch``. Moved to the model's device.
        steps, lr: optimizer steps and peak learning rate (AdamW, warm-up then cosine to ``min_lr_ratio·lr``).
        teacher: optional frozen model for distillation (same vocabulary); ``kd_weight`` ∈ [0, 1]
            mixes its KL term in (1 = pure distillation, e.g. on teacher-generated text).
        param_groups: optimizer groups (default: decay on ≥2-D tensors only); lrs are peak lrs.
        autocast_dtype: e.g. ``torch.bfloat16`` on a GPU (the model stays in its dtype).
        log_every: print loss every so many steps (0: never).
    Returns:
        ``{"loss": [...], "ce": [...], "seconds": float, "sec_per_step": float, "peak_cuda_mem_gb": float | None}``.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
    if kd_weight > 0 and teacher is None:
        raise ValueError("kd_weight > 0 needs a teacher model")
    device = next(model.parameters()).device
    if param_groups is None:
        params = [p for p in model.parameters() if p.requires_grad]
        param_groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        param_groups = [g for g in param_groups if g["params"]]
    opt = torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, warmup, min_lr_ratio))
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()  # its forward runs under no_grad; its requires_grad flags are left alone
    was_training = model.training
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history: dict = {"loss": [], "ce": []}
    stream = _batch_stream(batches)
    t0 = time.perf_counter()
    for step in range(steps):
        ids = next(stream).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            t_logits = None
            if teacher is not None and kd_weight > 0:
                with torch.no_grad():
                    t_logits = teacher(input_ids=ids).logits
            loss, ce = lm_loss(model(input_ids=ids).logits, ids, t_logits, kd_weight, kd_temperature)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in param_groups for p in g["params"]], grad_clip)
        opt.step()
        sched.step()
        history["loss"].append(float(loss.detach()))
        history["ce"].append(float(ce.detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            log(f"step {step:5d}  loss {history['loss'][-1]:.4f}  ce {history['ce'][-1]:.4f}  lr {sched.get_last_lr()[0]:.2e}")
    history["seconds"] = time.perf_counter() - t0
    history["sec_per_step"] = history["seconds"] / steps
    history["peak_cuda_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    model.train(was_training)
    if teacher is not None:
        teacher.train(teacher_was_training)
    return history


__all__ = ["train_lm", "lm_loss", "RandomWindows"]

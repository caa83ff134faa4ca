"""Fake quantization for QAT that runs the *same* quantize → decode path as the packed format.

Forward: the scale is the storable ``clamp_scales(S)`` (PoT, stored as ``S_top = top_scales(S)``) /
``clamp_int_scales(s)`` (int), the codes are computed exactly as :func:`potkernels.format.quantize_pot`
/ ``quantize_int`` compute them, and the weight is built by the reference decoders (``decode_pot``:
``S_top · ±2^(E − qmax)`` rounded once; ``decode_int``) in the decode dtype the ops use (bf16 for
bf16 activations, fp16 otherwise), then cast to the activation dtype. So a QAT layer's output is bit-identical to the
exported :class:`~potkernels.nn.PoTLinear` / ``IntLinear`` on the reference path.

Backward (straight-through estimators, one ``autograd.Function`` each, so nothing of the
integer decode is kept for autograd and the backward recomputes the codes from ``(w, S)``):

* weight: the gradient passes unchanged to the latent float weight where the weight lies inside
  the code's range, and is zeroed where the weight is clipped (|w| above the top rounding
  boundary ``S·2^(qmax+1/2)`` for PoT; ``w/s + z`` outside ``[-1/2, qmax+1/2]`` for int) — the
  clipped-STE of LSQ/PACT: moving a clipped weight changes nothing, the scale must move instead.
  PoT has no zero level, so small weights (rounded up to ±S) keep their gradient: it decides their sign.
* scale: codes are held constant (as PoTPTQ step 2 does): ``dŵ/dS = (-1)^p · 2^E`` for PoT and
  ``dŵ/ds = q − z`` for int, summed over the group. The fp16 rounding and the range clamp of
  the scale are straight-through.
"""
from __future__ import annotations

import torch

from potkernels.format.common import grouped
from potkernels.format.pot import clamp_scales, decode_pot, pot_encode, top_scales
from potkernels.format.uniform import clamp_int_scales, decode_int


def decode_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops decode weights to for activations of ``x_dtype`` (see potkernels.ops)."""
    return torch.bfloat16 if x_dtype == torch.bfloat16 else torch.float16


def _expand(per_group: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """``[N, n_groups]`` → ``[N, K]`` (the partial last group cut at K)."""
    return per_group.repeat_interleave(group_size, dim=1)[:, :k]


def _sum_groups(per_weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N, K]`` → ``[N, n_groups]`` sums (zero padding of the partial group adds nothing)."""
    return grouped(per_weight, group_size).sum(dim=-1)


def pot_codes(w: torch.Tensor, s: torch.Tensor, group_size: int, qmax: int):
    """(E int32, sign int32, S per weight fp32), each ``[N, K]``, exactly as ``quantize_pot`` makes them.

    ``s``: storable level scales S ``[N, n_groups]`` (:func:`clamp_scales`)."""
    e, sign = pot_encode(w, s, group_size, qmax)
    return e, sign, _expand(s.float(), group_size, w.shape[1])


def int_codes(w: torch.Tensor, s16: torch.Tensor, z: torch.Tensor, group_size: int, qmax: int):
    """(q fp32, z per weight fp32, s per weight fp32), each ``[N, K]``, exactly as ``quantize_int`` makes them."""
    k = w.shape[1]
    s_full, z_full = _expand(s16.float(), group_size, k), _expand(z, group_size, k)
    q = (torch.round(w.float() / s_full) + z_full).clamp(0, qmax)
    return q, z_full, s_full


class PoTFakeQuant(torch.autograd.Function):
    """``ŵ = (-1)^p · S · 2^E`` via the reference decoder (``S_top · v``); STE to ``w`` and to the float scales."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
                out_dtype: torch.dtype) -> torch.Tensor:
        """w ``[N, K]`` latent float; scales ``[N, n_groups]`` fp32 (before fp16 rounding/clamp).
        Returns ``[N, K]`` of ``out_dtype``."""
        qmax = 2 ** (bits - 1) - 1
        s = clamp_scales(scales.detach(), bits)  # the level scales the exported layer stores (as S_top)
        e, sign, _ = pot_codes(w.detach(), s, group_size, qmax)
        w_hat = decode_pot(e, sign, top_scales(s, bits).t().contiguous(), group_size, decode_dtype(out_dtype),
                           bits=bits).to(out_dtype)
        ctx.save_for_backward(w, s)
        ctx.meta = (qmax, group_size)
        return w_hat

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, s = ctx.saved_tensors
        qmax, group_size = ctx.meta
        e, sign, s_full = pot_codes(w, s, group_size, qmax)
        grad_w = grad_s = None
        if ctx.needs_input_grad[0]:
            inside = w.float().abs() <= s_full * 2.0 ** (qmax + 0.5)
            grad_w = (grad * inside).to(w.dtype)
        if ctx.needs_input_grad[1]:
            level = torch.exp2(e.float()) * (1.0 - 2.0 * sign.float())  # dŵ/dS = ±2^E
            grad_s = _sum_groups(grad.float() * level, group_size)
        return grad_w, grad_s, None, None, None


class IntFakeQuant(torch.autograd.Function):
    """``ŵ = (q − z) · s16`` via the reference decoder; STE to ``w`` and to the float scales."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                group_size: int, out_dtype: torch.dtype) -> torch.Tensor:
        """w ``[N, K]``; scales ``[N, n_groups]`` fp32; zeros ``[N, n_groups]`` integral fp32 in
        ``[0, 2^bits − 1]`` (fixed). Returns ``[N, K]`` of ``out_dtype``."""
        qmax = 2**bits - 1
        s16 = clamp_int_scales(scales.detach(), bits)
        q, _, _ = int_codes(w.detach(), s16, zeros, group_size, qmax)
        w_hat = decode_int(q, s16.t().contiguous(), zeros.to(torch.uint8).t().contiguous(), group_size,
                           decode_dtype(out_dtype)).to(out_dtype)
        ctx.save_for_backward(w, s16, zeros)
        ctx.meta = (qmax, group_size)
        return w_hat

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, s16, zeros = ctx.saved_tensors
        qmax, group_size = ctx.meta
        q, z_full, s_full = int_codes(w, s16, zeros, group_size, qmax)
        grad_w = grad_s = None
        if ctx.needs_input_grad[0]:
            u = w.float() / s_full + z_full
            grad_w = (grad * ((u >= -0.5) & (u <= qmax + 0.5))).to(w.dtype)
        if ctx.needs_input_grad[1]:
            grad_s = _sum_groups(grad.float() * (q - z_full), group_size)
        return grad_w, grad_s, None, None, None, None


__all__ = ["PoTFakeQuant", "IntFakeQuant", "pot_codes", "int_codes", "decode_dtype"]

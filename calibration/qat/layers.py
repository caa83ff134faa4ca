"""QAT layers: a latent float weight trained through the packed format's own quantize → decode.

One class per code, sharing :class:`QATLinear`:

* :class:`PoTQATLinear` — ``ŵ = (-1)^p · S · 2^E``, ``E = clamp(round(log2(|w|/S)), 0, qmax)``;
* :class:`IntQATLinear` — ``ŵ = (q − z) · s`` (the uniform-int baseline twin).

The latent weight is always ``[out_features, in_features]`` (``nn.Linear`` orientation): GPT-2's
transposed ``Conv1D`` weight is transposed once when the layer is built (``prepare_qat``), and the
forward is ``F.linear`` like the packed layers, so the orientation question ends there.

**Scale parametrisation (learnable, per group):** ``S = S0 · 2^γ`` with ``S0`` the initial scale
(RTN, PoTPTQ step 1, or any calibrated scale; a buffer) and ``γ`` (``log2_gain``, init 0) the
learned parameter. Why log-domain rather than LSQ's raw ``S`` or PoTPTQ's ``S·(1+Γ)``:
(1) S stays positive without clamping the parameter; (2) Adam's step on γ is a *relative* change
of S, the same for layers whose scales differ by orders of magnitude, so one learning rate fits
every layer (LSQ needs its 1/sqrt(n·qmax) gradient rescaling for that); (3) it matches the PoT
grid itself — γ = 1 shifts every level by one code; (4) weight decay on γ pulls S back towards
S0, the same role as PoTPTQ's (λ/2)‖Γ‖² regulariser (``train_qat`` leaves it off by default).
The gradient reaching γ is the codes-held-constant one (see fake_quant.py) times ``S·ln 2``.

**Int zero point: fixed** at its RTN value (an integer in [0, 2^b−1]). It is stored as uint8, so a
learnable zero point would need its own rounding STE; with the scale learnable the representable
range can still grow or shrink around the fixed integer offset, and keeping z fixed makes the
int twin differ from the PoT layer only in its code (the baseline stays like for like).

``S0``, ``γ`` and the int zero points stay fp32 under ``model.half()`` / ``.to(bf16)``.
"""
from __future__ import annotations

from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from potkernels.format import IntConfig, PoTConfig, quantize_int, quantize_pot
from potkernels.format.pot import clamp_scales
from potkernels.format.uniform import clamp_int_scales
from potkernels.nn import IntLinear, PoTLinear, apply_keeping_dtypes, linear_extra_repr

from .fake_quant import IntFakeQuant, PoTFakeQuant


class QATLinear(nn.Module):
    """Base of the fake-quantized linear layers (use :class:`PoTQATLinear` / :class:`IntQATLinear`).

    Args:
        weight: ``[out_features, in_features]`` float latent weight (copied into a Parameter).
        bias: ``[out_features]`` or None (copied into a Parameter).
        config: the code.
        scales: ``[out_features, n_groups]`` initial per-group scale S0 (float, ≥ 0; PoT: level scales).
    """

    config_cls: ClassVar[type]
    _fp32_names: ClassVar[tuple[str, ...]] = ("scale_init", "log2_gain")

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], config, scales: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"weight must be [out_features, in_features], got shape {tuple(weight.shape)}")
        n, k = weight.shape
        _, n_groups = config.groups_in(k)
        if tuple(scales.shape) != (n, n_groups):
            raise ValueError(f"scales must be [out_features, n_groups] = {(n, n_groups)}, got {tuple(scales.shape)}")
        if not bool((scales >= 0).all()) or not bool(torch.isfinite(scales).all()):
            raise ValueError("initial scales must be finite and non-negative (0: an all-zero group, kept at 0)")
        self.config = config
        self.in_features, self.out_features = k, n
        self.group_size = config.groups_in(k)[0]
        self.weight = nn.Parameter(weight.detach().clone().contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_buffer("scale_init", scales.detach().to(device=weight.device, dtype=torch.float32).clone())
        self.log2_gain = nn.Parameter(torch.zeros_like(self.scale_init))

    def float_scales(self) -> torch.Tensor:
        """Current scale ``S0 · 2^γ`` as fp32 ``[N, n_groups]`` (before fp16 rounding / clamping)."""
        return self.scale_init * torch.exp2(self.log2_gain)

    def stored_scales(self) -> torch.Tensor:
        """The storable ``[N, n_groups]`` scales of the exported layer (PoT: level scales S, float32,
        stored as ``S_top = top_scales(S)``; int: the fp16 s)."""
        raise NotImplementedError

    def fake_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The quantized weight ``[N, K]`` in ``dtype``, differentiable (STE) wrt weight and γ."""
        raise NotImplementedError

    def pack(self):
        """The packed ``PoTWeight`` / ``IntWeight`` of the current latent weight and scales."""
        raise NotImplementedError

    def to_packed(self) -> nn.Module:
        """The exported ``PoTLinear`` / ``IntLinear`` (same device; bias copied)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same as potkernels.ops._torch_*_matmul: decode, cast to x's dtype, F.linear. Under
        # autocast the matmul runs in the autocast dtype, so decode for that dtype (bf16: S rounded
        # to bf16, as the packed layer decodes for bf16 activations) rather than round fp16 codes again.
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x, self.fake_weight(dtype), bias)

    def _apply(self, fn, recurse=True):
        # The scale parameters stay fp32 when the model is cast (a bf16 γ would lose small updates).
        return apply_keeping_dtypes(self, super()._apply, fn, recurse, self._fp32_names, dtype=torch.float32)

    def extra_repr(self) -> str:
        return linear_extra_repr(self)


class PoTQATLinear(QATLinear):
    """Fake-quantized PoT linear; exports to :class:`potkernels.nn.PoTLinear` bit-exactly."""

    config_cls = PoTConfig

    def stored_scales(self) -> torch.Tensor:
        return clamp_scales(self.float_scales().detach(), self.config.bits)

    def fake_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return PoTFakeQuant.apply(self.weight, self.float_scales(), self.config.bits, self.group_size, dtype)

    @torch.no_grad()
    def pack(self):
        return quantize_pot(self.weight.detach(), self.config, scales=self.stored_scales().float())

    @torch.no_grad()
    def to_packed(self) -> PoTLinear:
        return PoTLinear.from_weight(self.pack(), None if self.bias is None else self.bias.detach())


class IntQATLinear(QATLinear):
    """Fake-quantized uniform-int linear (learnable scale, fixed zero point); exports to IntLinear exactly.

    Args (besides the base ones): zeros ``[out_features, n_groups]`` zero points (rounded and
    clamped into ``[0, 2^bits − 1]`` here).
    """

    config_cls = IntConfig
    _fp32_names = ("scale_init", "log2_gain", "zeros")

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], config: IntConfig,
                 scales: torch.Tensor, zeros: torch.Tensor) -> None:
        super().__init__(weight, bias, config, scales)
        if tuple(zeros.shape) != tuple(scales.shape):
            raise ValueError(f"zeros must have the scales' shape {tuple(scales.shape)}, got {tuple(zeros.shape)}")
        z = torch.round(zeros.detach().to(device=weight.device, dtype=torch.float32)).clamp(0, config.qmax)
        self.register_buffer("zeros", z)

    def stored_scales(self) -> torch.Tensor:
        return clamp_int_scales(self.float_scales().detach(), self.config.bits)

    def fake_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return IntFakeQuant.apply(self.weight, self.float_scales(), self.zeros, self.config.bits,
                                  self.group_size, dtype)

    @torch.no_grad()
    def pack(self):
        return quantize_int(self.weight.detach(), self.config, scales=self.stored_scales().float(), zeros=self.zeros)

    @torch.no_grad()
    def to_packed(self) -> IntLinear:
        return IntLinear.from_weight(self.pack(), None if self.bias is None else self.bias.detach())


__all__ = ["QATLinear", "PoTQATLinear", "IntQATLinear"]

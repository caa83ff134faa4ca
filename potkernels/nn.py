"""``nn.Module`` layers holding packed weights: drop-in replacements for ``nn.Linear`` / GPT-2 ``Conv1D``.

The packed tensors are buffers (so ``state_dict``, ``.to(device)`` and safetensors see them);
their dtypes are part of the format and survive ``model.half()`` / ``model.to(bf16)``. The
forward calls the registered op, which runs the Triton kernel on CUDA and the reference decode
elsewhere (``layer.backend = "triton"`` forces the kernels, e.g. under the interpreter).
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
from torch import nn

from . import ops
from .format import IntConfig, IntWeight, PoTConfig, PoTWeight, quantize_int, quantize_pot


def float_weight(module: nn.Module) -> torch.Tensor:
    """The ``[out_features, in_features]`` weight of an ``nn.Linear`` or transformers ``Conv1D``.

    GPT-2's ``Conv1D`` stores its weight transposed, ``[in_features, out_features]``.
    """
    if isinstance(module, nn.Linear):
        return module.weight.detach()
    if is_conv1d(module):
        return module.weight.detach().t()
    raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(module).__name__}")


def is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency, but keep the format usable without it
        return False
    return isinstance(module, Conv1D)


def apply_keeping_dtypes(module: nn.Module, super_apply, fn, recurse: bool, names: tuple[str, ...],
                         dtype: Optional[torch.dtype] = None) -> nn.Module:
    """``nn.Module._apply`` that moves but never casts the tensors ``names`` (to ``dtype``, or their own).

    A cast tensor is re-derived from its value before the call (moved only), since a round trip such
    as fp16 → bf16 → fp16 is lossy. Works for buffers and parameters.
    """
    before = {n: getattr(module, n).detach() for n in names}
    super_apply(fn, recurse)
    for n, old in before.items():
        new = getattr(module, n)
        want = dtype or old.dtype
        if new.dtype != want:
            restored = old.to(device=new.device, dtype=want)
            if isinstance(new, nn.Parameter):
                new.data = restored
            else:
                setattr(module, n, restored)
    return module


def linear_extra_repr(layer: nn.Module) -> str:
    """Shared ``extra_repr`` of the packed and QAT linear layers."""
    g = layer.config.group_size or "channel"
    return (f"in_features={layer.in_features}, out_features={layer.out_features}, bits={layer.config.bits}, "
            f"group_size={g}, bias={layer.bias is not None}")


class _PackedLinear(nn.Module):
    """Shared body of :class:`PoTLinear` and :class:`IntLinear`; subclasses name their tensors."""

    config_cls: ClassVar[type]
    weight_cls: ClassVar[type]
    tensor_names: ClassVar[tuple[str, ...]]

    def __init__(self, in_features: int, out_features: int, config: Any, bias: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.backend: ops.Backend = None
        # CPU inference option (see cache_decoded_weights): keep the decoded weight after the first
        # forward instead of decoding every weight again at every generated token.
        self.cache_decoded = False
        self._decoded: Optional[torch.Tensor] = None
        for name, (dtype, shape) in self._buffer_specs().items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device))
        self.bias: Optional[torch.Tensor]
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    def _buffer_specs(self) -> dict[str, tuple[torch.dtype, tuple[int, int]]]:
        return self.weight_cls.expected_for(self.config, self.in_features, self.out_features)

    @classmethod
    def _quantize(cls, w: torch.Tensor, config: Any, **params: torch.Tensor):
        raise NotImplementedError

    @classmethod
    def from_float(cls, module: nn.Module, config: Any, **params: torch.Tensor) -> "_PackedLinear":
        """Quantize an ``nn.Linear`` or ``Conv1D`` (``params``: optional calibrated scales etc.)."""
        w = float_weight(module)
        layer = cls.from_weight(cls._quantize(w, config, **params), module.bias)
        return layer

    @classmethod
    def from_weight(cls, packed: Any, bias: Optional[torch.Tensor] = None) -> "_PackedLinear":
        """Wrap an already packed weight (``PoTWeight`` / ``IntWeight``)."""
        n, k = packed.shape
        device = packed.scales.device
        layer = cls(k, n, packed.config, bias=bias is not None, device=device)
        layer.load_packed(packed)
        if bias is not None:
            layer.bias = bias.detach().clone().to(device)
        return layer

    def load_packed(self, packed: Any) -> None:
        packed.validate()
        if packed.shape != (self.out_features, self.in_features) or packed.config != self.config:
            raise ValueError(f"packed weight {packed.shape} {packed.config} does not fit {self}")
        for name, t in packed.tensors().items():
            getattr(self, name).copy_(t)
        self._decoded = None

    @property
    def packed(self):
        """The buffers as a ``PoTWeight`` / ``IntWeight`` (shares storage)."""
        return self.weight_cls(*(getattr(self, n) for n in self.tensor_names), self.in_features, self.config)

    def dequantize(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """Decoded weight ``[out_features, in_features]``."""
        return ops.dequantize(self.packed, dtype, backend=self.backend)

    def _apply(self, fn, recurse=True):
        # model.half()/.to(bf16) must not cast the packed tensors: their dtypes are the format.
        self._decoded = None
        return apply_keeping_dtypes(self, super()._apply, fn, recurse, self.tensor_names)

    def _cached_forward(self, x: torch.Tensor) -> torch.Tensor:
        """What the reference path computes (decode, then ``F.linear`` in ``x``'s dtype), decoding once.

        The cache holds the weight in ``x``'s dtype: ``out × in × itemsize`` bytes per layer on top of
        the packed buffers (fp32 activations: 4 bytes per weight, ~8× a 4-bit packed weight).
        """
        w = self._decoded
        if w is None or w.dtype != x.dtype or w.device != x.device:
            w = ops.dequantize(self.packed, ops._weight_dtype(x.dtype), backend=self.backend).to(x.dtype)
            self._decoded = w
        return ops._linear(x, w, self.bias)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_decoded"] = None  # deepcopy / pickle: the cache is derived data
        return state

    def extra_repr(self) -> str:
        return linear_extra_repr(self)


class PoTLinear(_PackedLinear):
    """Linear layer with a packed power-of-two weight: ``qweight`` codes (v2 layout) + fp16 ``scales``,
    the per-group top levels S_top of format v3. ``from_float(..., scales=S)`` takes level scales S."""

    config_cls = PoTConfig
    weight_cls = PoTWeight
    tensor_names = ("qweight", "scales")

    @classmethod
    def _quantize(cls, w, config, scales: Optional[torch.Tensor] = None):
        return quantize_pot(w, config, scales=scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache_decoded:
            return self._cached_forward(x)
        return ops.pot_matmul(x, self.packed, self.bias, backend=self.backend)


class IntLinear(_PackedLinear):
    """Linear layer with a packed uniform-int weight: the baseline twin of :class:`PoTLinear`."""

    config_cls = IntConfig
    weight_cls = IntWeight
    tensor_names = ("qweight", "scales", "zeros")

    @classmethod
    def _quantize(cls, w, config, scales: Optional[torch.Tensor] = None, zeros: Optional[torch.Tensor] = None):
        return quantize_int(w, config, scales=scales, zeros=zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache_decoded:
            return self._cached_forward(x)
        return ops.int_matmul(x, self.packed, self.bias, backend=self.backend)


def linear_class_for(config: Any) -> type[_PackedLinear]:
    if isinstance(config, PoTConfig):
        return PoTLinear
    if isinstance(config, IntConfig):
        return IntLinear
    raise TypeError(f"config must be PoTConfig or IntConfig, got {type(config).__name__}")

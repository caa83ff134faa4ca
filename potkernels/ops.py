"""Registered custom ops: one declaration each, a reference (torch) and a Triton implementation.

Declared once with ``torch.library.custom_op`` + ``register_fake`` so they trace under
``torch.compile`` and replay in CUDA graphs. The default implementation (CPU and any other
device) is the pure-PyTorch reference; CUDA tensors go to the Triton kernels. The public
functions at the bottom take :class:`PoTWeight` / :class:`IntWeight` and a ``backend``:

* ``None``     — pick by device (the registered op);
* ``"torch"``  — the reference path, any device;
* ``"triton"`` — the Triton kernels, also on CPU tensors under ``TRITON_INTERPRET=1``.

Activations ``x [..., K]`` may be fp16, bf16 or fp32; the output has x's dtype and shape
``[..., N]``. Weights are decoded to bf16 for bf16 activations, to fp16 otherwise.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from .format import IntWeight, PoTWeight
from .format.packing import unpack_codes
from .format.pot import decode_pot
from .format.uniform import decode_int

Backend = Optional[Literal["torch", "triton"]]
ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _weight_dtype(x_dtype: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if x_dtype == torch.bfloat16 else torch.float16


# ---------------------------------------------------------------- reference (torch) path
def _torch_pot_dequantize(qweight, scales, bits, group_size, in_features, dtype):
    c = unpack_codes(qweight, "pot", bits, in_features)
    return decode_pot(c & ((1 << (bits - 1)) - 1), c >> (bits - 1), scales, group_size, dtype, bits=bits)


def _torch_int_dequantize(qweight, scales, zeros, bits, group_size, in_features, dtype):
    return decode_int(unpack_codes(qweight, "int", bits, in_features), scales, zeros, group_size, dtype)


def _linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))


def _torch_pot_matmul(x, qweight, scales, bias, bits, group_size, in_features):
    w = _torch_pot_dequantize(qweight, scales, bits, group_size, in_features, _weight_dtype(x.dtype))
    return _linear(x, w, bias)


def _torch_int_matmul(x, qweight, scales, zeros, bias, bits, group_size, in_features):
    w = _torch_int_dequantize(qweight, scales, zeros, bits, group_size, in_features, _weight_dtype(x.dtype))
    return _linear(x, w, bias)


# ---------------------------------------------------------------- op declarations
@torch.library.custom_op("potkernels::pot_dequantize", mutates_args=())
def _pot_dequantize_op(qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                       group_size: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    return _torch_pot_dequantize(qweight, scales, bits, group_size, in_features, dtype)


@torch.library.custom_op("potkernels::int_dequantize", mutates_args=())
def _int_dequantize_op(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                       group_size: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    return _torch_int_dequantize(qweight, scales, zeros, bits, group_size, in_features, dtype)


@torch.library.custom_op("potkernels::pot_matmul", mutates_args=())
def _pot_matmul_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int) -> torch.Tensor:
    return _torch_pot_matmul(x, qweight, scales, bias, bits, group_size, in_features)


@torch.library.custom_op("potkernels::int_matmul", mutates_args=())
def _int_matmul_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int) -> torch.Tensor:
    return _torch_int_matmul(x, qweight, scales, zeros, bias, bits, group_size, in_features)


@_pot_dequantize_op.register_fake
def _(qweight, scales, bits, group_size, in_features, dtype):
    return scales.new_empty((scales.shape[1], in_features), dtype=dtype)


@_int_dequantize_op.register_fake
def _(qweight, scales, zeros, bits, group_size, in_features, dtype):
    return scales.new_empty((scales.shape[1], in_features), dtype=dtype)


@_pot_matmul_op.register_fake
def _(x, qweight, scales, bias, bits, group_size, in_features):
    return x.new_empty((*x.shape[:-1], scales.shape[1]))


@_int_matmul_op.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size, in_features):
    return x.new_empty((*x.shape[:-1], scales.shape[1]))


# ---------------------------------------------------------------- Triton implementations
def _triton_pot_dequantize(qweight, scales, bits, group_size, in_features, dtype):
    from .kernels import pot_dequantize_triton

    return pot_dequantize_triton(qweight, scales, bits, group_size, in_features, dtype)


def _triton_int_dequantize(qweight, scales, zeros, bits, group_size, in_features, dtype):
    from .kernels import int_dequantize_triton

    return int_dequantize_triton(qweight, scales, zeros, bits, group_size, in_features, dtype)


def _triton_pot_matmul(x, qweight, scales, bias, bits, group_size, in_features):
    from .kernels import pot_matmul_triton

    x2 = x.reshape(-1, x.shape[-1])
    y = pot_matmul_triton(x2, qweight, scales, bias, bits, group_size, in_features)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _triton_int_matmul(x, qweight, scales, zeros, bias, bits, group_size, in_features):
    from .kernels import int_matmul_triton

    x2 = x.reshape(-1, x.shape[-1])
    y = int_matmul_triton(x2, qweight, scales, zeros, bias, bits, group_size, in_features)
    return y.reshape(*x.shape[:-1], y.shape[-1])


_pot_dequantize_op.register_kernel("cuda")(_triton_pot_dequantize)
_int_dequantize_op.register_kernel("cuda")(_triton_int_dequantize)
_pot_matmul_op.register_kernel("cuda")(_triton_pot_matmul)
_int_matmul_op.register_kernel("cuda")(_triton_int_matmul)


# ---------------------------------------------------------------- public entry points
def _check_backend(backend: Backend) -> None:
    if backend not in (None, "torch", "triton"):
        raise ValueError(f"backend must be None, 'torch' or 'triton', got {backend!r}")


def _check_x(x: torch.Tensor, in_features: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in ACT_DTYPES:
        raise TypeError(f"activations must be an fp16, bf16 or fp32 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"x must end in {in_features} features (the weight's in_features), got shape {tuple(x.shape)}")


def _call(backend: Backend, args: tuple, torch_impl, triton_impl, op_name: str) -> torch.Tensor:
    """Run one implementation directly (``"torch"`` / ``"triton"``) or the registered op, which
    picks by device (``None``)."""
    if backend == "torch":
        return torch_impl(*args)
    if backend == "triton":
        return triton_impl(*args)
    return getattr(torch.ops.potkernels, op_name)(*args)


def pot_matmul(x: torch.Tensor, w: PoTWeight, bias: Optional[torch.Tensor] = None,
               backend: Backend = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with W the decoded PoT weight: x ``[..., K]`` → ``[..., N]`` in x's dtype."""
    _check_backend(backend)
    _check_x(x, w.in_features)
    args = (x, w.qweight, w.scales, bias, w.config.bits, w.group_size, w.in_features)
    return _call(backend, args, _torch_pot_matmul, _triton_pot_matmul, "pot_matmul")


def int_matmul(x: torch.Tensor, w: IntWeight, bias: Optional[torch.Tensor] = None,
               backend: Backend = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with W the decoded uniform-int weight (the baseline twin)."""
    _check_backend(backend)
    _check_x(x, w.in_features)
    args = (x, w.qweight, w.scales, w.zeros, bias, w.config.bits, w.group_size, w.in_features)
    return _call(backend, args, _torch_int_matmul, _triton_int_matmul, "int_matmul")


def dequantize(w: PoTWeight | IntWeight, dtype: torch.dtype = torch.float16,
               backend: Backend = None) -> torch.Tensor:
    """Decode a packed weight to ``[out_features, in_features]`` fp16/bf16 (bit-exact on every backend)."""
    _check_backend(backend)
    if isinstance(w, PoTWeight):
        args = (w.qweight, w.scales, w.config.bits, w.group_size, w.in_features, dtype)
        impls = (_torch_pot_dequantize, _triton_pot_dequantize, "pot_dequantize")
    elif isinstance(w, IntWeight):
        args = (w.qweight, w.scales, w.zeros, w.config.bits, w.group_size, w.in_features, dtype)
        impls = (_torch_int_dequantize, _triton_int_dequantize, "int_dequantize")
    else:
        raise TypeError(f"expected a PoTWeight or IntWeight, got {type(w).__name__}")
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    return _call(backend, args, *impls)

"""QAT training: :func:`calibration.train.train_lm` with the QAT scale gains in their own parameter group."""
from __future__ import annotations

from torch import nn

from ..train import Batches, train_lm
from .prepare import qat_layers, qat_param_groups


def train_qat(model: nn.Module, batches: Batches, steps: int, lr: float, *, scale_lr: float | None = None,
              weight_decay: float = 0.0, scale_weight_decay: float = 0.0, **kwargs) -> dict:
    """:func:`train_lm` for a model prepared with ``prepare_qat``.

    ``scale_lr`` is the peak lr of the scale gains γ (log2 of S/S0; default ``lr``);
    ``scale_weight_decay`` pulls S back towards its initial value. Other arguments as ``train_lm``
    (``teacher``, ``kd_weight``, ``kd_temperature``, ``warmup``, ``autocast_dtype`` …).
    """
    if next(qat_layers(model), None) is None:
        raise ValueError("train_qat needs a model prepared with prepare_qat (no QAT layer found); use train_lm")
    groups = qat_param_groups(model, lr, scale_lr, weight_decay, scale_weight_decay)
    return train_lm(model, batches, steps, lr, param_groups=groups, **kwargs)

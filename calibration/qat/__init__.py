"""Quantization-aware training through the packed PoT (and uniform-int) codes.

    model = prepare_qat(model, PoTConfig(bits=3, group_size=128))   # swap layers, scales from RTN
    train_qat(model, batches, steps=300, lr=5e-5, teacher=fp_model, kd_weight=0.5)  # or HF Trainer
    convert(model)                                                  # → packed PoTLinear, same logits

Files: ``fake_quant.py`` (forward = the format's quantize/decode, STE backward), ``layers.py``
(QAT layers, learnable log-domain scales), ``prepare.py`` (swap / export), ``datafree.py``
(teacher-generated text), ``training.py`` (``train_qat``); the loop is :mod:`calibration.train`.
"""
from .datafree import sample_from_teacher
from .layers import IntQATLinear, PoTQATLinear, QATLinear
from .prepare import convert, prepare_qat, qat_layers, qat_param_groups, scales_from_quantized
from .training import train_qat

__all__ = [
    "QATLinear", "PoTQATLinear", "IntQATLinear", "prepare_qat", "convert", "qat_layers", "qat_param_groups",
    "scales_from_quantized", "train_qat", "sample_from_teacher",
]

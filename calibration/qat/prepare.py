"""Swap a model's linear layers for QAT layers (``prepare_qat``) and export them (``convert``).

``prepare_qat`` → train (``train_qat`` or the Hugging Face ``Trainer``) → ``convert``: the converted
model holds packed :class:`~potkernels.nn.PoTLinear` / ``IntLinear`` layers and computes exactly
the logits the QAT model computed (same codes, same fp16 scales, same decode, same ``F.linear``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Iterable, Iterator, Optional, Union

import torch
from torch import nn

from potkernels.format import IntConfig, PoTConfig
from potkernels.format.pot import level_scales, rtn_scales
from potkernels.format.uniform import rtn_int_params
from potkernels.integrations.hf import (SQNR_WARN_DB, LayerReport, eligible_linears, layer_report, set_submodule,
                                       warn_low_sqnr)
from potkernels.nn import IntLinear, PoTLinear, _PackedLinear, float_weight

from .layers import IntQATLinear, PoTQATLinear, QATLinear

InitScales = Union[str, Callable[..., Any], Mapping[str, Any]]


def qat_layers(model: nn.Module) -> Iterator[tuple[str, QATLinear]]:
    """(qualified name, layer) of every QAT layer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, QATLinear):
            yield name, module


def _step1_init_scales() -> Callable[..., torch.Tensor]:
    """``calibration.init.init_scales`` (PoTPTQ step 1, written by the calibrator), imported lazily."""
    try:
        from calibration.init import init_scales
    except ImportError as e:
        raise ImportError(
            "init='init' needs PoTPTQ step 1 (calibration.init.init_scales), which is not in this checkout; "
            "use init='rtn', a callable (w, cfg) -> scales, or a {layer name: scales} mapping"
        ) from e
    return init_scales


def _initial_params(name: str, w: torch.Tensor, cfg: PoTConfig | IntConfig, init: InitScales):
    """(scales ``[N, n_groups]``, zeros or None) for one layer's ``[N, K]`` float weight."""
    if isinstance(init, str):
        if init == "rtn":
            return (rtn_scales(w, cfg), None) if isinstance(cfg, PoTConfig) else rtn_int_params(w, cfg)
        if init == "init":
            if not isinstance(cfg, PoTConfig):
                raise ValueError("init='init' is PoTPTQ step 1, a PoT-only initialisation; use init='rtn' for int")
            got = _step1_init_scales()(w, cfg)
        else:
            raise ValueError(f"init must be 'rtn', 'init', a callable or a mapping, got {init!r}")
    elif isinstance(init, Mapping):
        if name not in init:
            raise KeyError(f"init mapping has no scales for layer {name!r} (has {len(init)} layers)")
        got = init[name]
    elif callable(init):
        got = init(w, cfg)
    else:
        raise TypeError(f"init must be 'rtn', 'init', a callable or a mapping, got {type(init).__name__}")
    scales, zeros = got if isinstance(got, tuple) else (got, None)
    if isinstance(cfg, IntConfig) and zeros is None:
        zeros = rtn_int_params(w, cfg)[1]  # scales given alone: keep the RTN zero point
    return scales.to(w.device).float(), zeros


def prepare_qat(model: nn.Module, cfg: PoTConfig | IntConfig, skip: Iterable[str] = ("lm_head",),
                init: InitScales = "rtn") -> nn.Module:
    """Replace every eligible ``nn.Linear`` / GPT-2 ``Conv1D`` by a QAT layer, in place.

    Args:
        model: a float model (GPT-2, Llama family, any module with ``nn.Linear`` / ``Conv1D``).
        cfg: :class:`PoTConfig` (→ :class:`PoTQATLinear`) or :class:`IntConfig` (→ :class:`IntQATLinear`).
        skip: names, last name parts or globs left in float (default ``lm_head``: tied embeddings).
        init: initial per-group scales S0:
            ``"rtn"`` — round-to-nearest (PoT: group max on the top level; int: min/max);
            ``"init"`` — PoTPTQ step 1 (``calibration.init.init_scales``, PoT only);
            a callable ``(w [N, K] fp32, cfg) -> scales [N, n_groups]`` (int may return
            ``(scales, zeros)``) — e.g. ``calibration.init.init_scales`` itself;
            a mapping ``{layer name: scales or (scales, zeros)}`` — e.g. from a calibrated model,
            see :func:`scales_from_quantized`.
    Returns:
        The same model; ``model.qat_config`` is set. Train it, then :func:`convert`.
    """
    if not isinstance(cfg, (PoTConfig, IntConfig)):
        raise TypeError(f"cfg must be a PoTConfig or IntConfig, got {type(cfg).__name__}")
    if next(qat_layers(model), None) is not None:
        raise ValueError("model is already prepared for QAT (it has QAT layers); convert() it or start from the float model")
    if any(isinstance(m, _PackedLinear) for m in model.modules()):
        raise ValueError("model already holds packed PoTLinear/IntLinear layers; QAT needs the float model "
                         "(to start from calibrated scales pass init=scales_from_quantized(quantized_model))")
    swapped = 0
    for name, module in list(eligible_linears(model, skip)):
        w = float_weight(module)
        scales, zeros = _initial_params(name, w.float(), cfg, init)
        if isinstance(cfg, PoTConfig):
            layer = PoTQATLinear(w, module.bias, cfg, scales)
        else:
            layer = IntQATLinear(w, module.bias, cfg, scales, zeros)
        layer.weight.requires_grad_(module.weight.requires_grad)
        set_submodule(model, name, layer.to(w.device))
        swapped += 1
    if swapped == 0:
        raise ValueError("prepare_qat found no nn.Linear/Conv1D layer to quantize (check `skip`)")
    model.qat_config = cfg
    return model


@torch.no_grad()
def convert(model: nn.Module, warn_sqnr_db: Optional[float] = SQNR_WARN_DB) -> nn.Module:
    """Export every QAT layer to a packed ``PoTLinear`` / ``IntLinear``, in place.

    The learned scales and the codes of the latent weights are packed; the converted model's
    forward equals the QAT model's forward (bit-exact on the reference path). Sets
    ``model.quantization_config`` and ``model.quantization_report`` like ``quantize_model``, and
    warns like it about layers with a group below ``warn_sqnr_db`` (``None``: no warning).
    """
    layers = list(qat_layers(model))
    if not layers:
        raise ValueError("convert() found no QAT layer: call prepare_qat(model, cfg) (and train) first")
    report: list[LayerReport] = []
    for name, layer in layers:
        packed_layer = layer.to_packed()
        report.append(layer_report(name, layer.weight.detach(), packed_layer))
        set_submodule(model, name, packed_layer)
    model.quantization_config = layers[0][1].config
    model.quantization_report = report
    if hasattr(model, "qat_config"):
        del model.qat_config
    warn_low_sqnr(report, warn_sqnr_db)
    return model


def scales_from_quantized(model: nn.Module) -> dict[str, Any]:
    """``{layer name: scales [N, n_groups] fp32}`` (PoT: level scales S; int: ``(scales, zeros)``) of a packed model.

    Lets QAT start from calibrated scales, e.g. those of ``calibrate_model(..., method="two-step")``:
    ``prepare_qat(float_model, cfg, init=scales_from_quantized(calibrated_model))``.
    """
    out: dict[str, Any] = {}
    for name, m in model.named_modules():
        if isinstance(m, PoTLinear):
            out[name] = level_scales(m.scales, m.config.bits).t()  # stored top levels → level scales S
        elif isinstance(m, IntLinear):
            out[name] = (m.scales.t().float(), m.zeros.t().float())
    if not out:
        raise ValueError("scales_from_quantized found no PoTLinear/IntLinear layer in the model")
    return out


def qat_param_groups(model: nn.Module, lr: float, scale_lr: float | None = None,
                     weight_decay: float = 0.0, scale_weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups: QAT scale gains γ (own lr, decay = pull towards S0), decayed matrices, the rest.

    Use with any torch optimizer, or with ``Trainer(..., optimizers=(opt, sched))`` to give the
    scales their own learning rate.
    """
    gains = [p for _, m in qat_layers(model) for p in [m.log2_gain] if p.requires_grad]
    ids = {id(p) for p in gains}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "lr": lr, "weight_decay": weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "lr": lr, "weight_decay": 0.0},
        {"params": gains, "lr": lr if scale_lr is None else scale_lr, "weight_decay": scale_weight_decay},
    ]
    return [g for g in groups if g["params"]]


__all__ = ["prepare_qat", "convert", "qat_layers", "scales_from_quantized", "qat_param_groups"]

"""One entry point for every calibration method: RTN, PoTPTQ step 1, PoTPTQ step 1 + 2."""
from __future__ import annotations

import time
from typing import Iterable, Literal, Optional

import torch
from torch import nn

from potkernels.format.config import IntConfig, PoTConfig
from potkernels.integrations.hf import eligible_linears, quantize_model, summarize_report
from potkernels.nn import float_weight

from .init import init_scales
from .refine import refine_model

Method = Literal["rtn", "init", "two-step"]
METHODS = ("rtn", "init", "two-step")

# Defaults sized for a 2-core CPU run of a 135M model (≈15 min); raise them on a GPU
# (the paper: 128 × 2048 tokens, 10 epochs at 3 bits, 40 at 2 bits).
DEFAULT_EPOCHS = 4
DEFAULT_LR = 1e-3
DEFAULT_LAM = 0.1
DEFAULT_BATCH = 2


def check_method(cfg: PoTConfig | IntConfig, method: str) -> None:
    """Reject impossible combinations up front (clear message, before any work)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(cfg, IntConfig) and method != "rtn":
        raise ValueError(f"method {method!r} calibrates PoT scales; uniform int (kind 'int') only supports 'rtn'")
    if not isinstance(cfg, (PoTConfig, IntConfig)):
        raise TypeError(f"cfg must be a PoTConfig or IntConfig, got {type(cfg).__name__}")


def calibrate_model(model: nn.Module, cfg: PoTConfig | IntConfig, calib_ids: Optional[torch.Tensor] = None,
                    method: Method = "two-step", epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR,
                    lam: float = DEFAULT_LAM, batch_size: int = DEFAULT_BATCH,
                    device: Optional[str | torch.device] = None, skip: Iterable[str] = ("lm_head",),
                    act_dtype: Optional[torch.dtype] = None, progress: bool = True, seed: int = 0,
                    act_weighted: Optional[bool] = None) -> nn.Module:
    """Quantize ``model`` in place with calibrated scales.

    Args:
        model: a GPT-2 or Llama-family causal LM in float.
        cfg: :class:`PoTConfig` (any method) or :class:`IntConfig` (``"rtn"`` only).
        calib_ids: LongTensor ``[n_samples, seq_len]`` of calibration windows (``"two-step"`` only).
        method: ``"rtn"`` round-to-nearest scales; ``"init"`` PoTPTQ step 1 (data-free grid
            search); ``"two-step"`` step 1 then step 2 (block-wise Γ refinement on ``calib_ids``).
        epochs, lr, lam, batch_size: step-2 Adam epochs over the samples, learning rate, λ of
            the Γ regulariser, samples per step.
        device: where to run (the model is moved there and stays there); default: its device.
        skip: layers left in float (see :func:`potkernels.quantize_model`).
        act_dtype: dtype of the activations kept between blocks (default: see
            :func:`calibration.refine.default_act_dtype`).
        act_weighted: step 1 weights each input column's error by its mean x² on
            ``calib_ids`` (block by block, inputs from the quantized previous blocks); with
            ``"init"`` this is step 1 alone, with ``"two-step"`` step 2 starts from it. Needs
            calibration data; not for ``"rtn"``. Default (None): on for ``"two-step"``, which
            has the data anyway (the paper's data-free step 1 collapses SmolLM2 at 3 bits;
            pass False for the paper's method), off for ``"init"`` (data-free).
    Returns:
        The model; ``model.quantization_report`` lists every swapped layer, and
        ``model.calibration_report`` holds the method, settings, timing and (two-step) the
        per-block losses and per-layer SQNR of step 1 vs final.
    """
    check_method(cfg, method)
    if act_weighted is None:
        act_weighted = method == "two-step" and calib_ids is not None
    if act_weighted and method == "rtn":
        raise ValueError("act_weighted applies to the step-1 search; method 'rtn' has none (use 'init' or 'two-step')")
    if act_weighted and calib_ids is None:
        raise ValueError("act_weighted needs calibration data (calib_ids [n_samples, seq_len])")
    if device is not None:
        model.to(device)
    model.eval()
    skip = tuple(skip)
    t0 = time.perf_counter()
    info: dict = {"method": method, "config": cfg.to_dict(), "act_weighted": act_weighted}
    if method == "rtn":
        quantize_model(model, cfg, skip=skip)
    elif method == "init" and not act_weighted:
        quantize_model(model, cfg, skip=skip, params=lambda _n, m: {"scales": init_scales(float_weight(m), cfg)})
    else:
        if calib_ids is None:
            raise ValueError("method 'two-step' needs calibration data (calib_ids [n_samples, seq_len])")
        if method == "init":  # activation-weighted step 1 alone: the block-wise pass with no step 2
            epochs = 0
        if calib_ids.dim() != 2 or calib_ids.dtype != torch.long or calib_ids.numel() == 0:
            raise ValueError(f"calib_ids must be a non-empty LongTensor [n_samples, seq_len], got "
                             f"{calib_ids.dtype} {tuple(calib_ids.shape)}")
        if epochs < 0 or lr <= 0 or lam < 0 or batch_size < 1:
            raise ValueError(f"need epochs ≥ 0, lr > 0, lam ≥ 0, batch_size ≥ 1; got {epochs}, {lr}, {lam}, {batch_size}")
        blocks, layers = refine_model(model, cfg, calib_ids, epochs, lr, lam, batch_size, skip=skip,
                                      act_dtype=act_dtype, progress=progress, seed=seed, act_weighted=act_weighted)
        # Linears outside the blocks (none in GPT-2 / Llama besides the skipped lm_head) get step 1.
        if any(True for _ in eligible_linears(model, skip)):
            quantize_model(model, cfg, skip=skip,
                           params=lambda _n, m: {"scales": init_scales(float_weight(m), cfg)})
            layers += model.quantization_report
        if not layers:
            raise ValueError("no linear layer was quantized (check `skip`)")
        model.quantization_report, model.quantization_config = layers, cfg
        info.update(samples=calib_ids.shape[0], seq_len=calib_ids.shape[1], epochs=epochs, lr=lr, lam=lam,
                    batch_size=batch_size, blocks=[b.to_dict() for b in blocks])
    info["seconds"] = time.perf_counter() - t0
    info["summary"] = summarize_report(model.quantization_report)
    model.calibration_report = info
    return model

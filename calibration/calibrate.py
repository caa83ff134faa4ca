"""One entry point for every calibration method: RTN, PoTPTQ step 1, PoTPTQ step 1 + 2, GPTQ."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Literal, Optional

import torch
from torch import nn

from potkernels.format.config import IntConfig, PoTConfig
from potkernels.integrations.hf import SQNR_WARN_DB, eligible_linears, quantize_model, summarize_report, warn_low_sqnr
from potkernels.nn import float_weight

from .gptq import (DEFAULT_BLOCK_SIZE, DEFAULT_DAMP, DEFAULT_REFINE_BATCH, DEFAULT_REFINE_EPOCHS, DEFAULT_REFINE_LR,
                   DEFAULT_SCALE_FITS, gptq_model)
from .init import init_scales
from .refine import refine_model
from .stream import BlockLoop, ResumeState, fingerprint

Method = Literal["rtn", "init", "two-step", "gptq"]
METHODS = ("rtn", "init", "two-step", "gptq")
# Methods that need calibration data; and those a uniform-int config supports.
DATA_METHODS = ("two-step", "gptq")
INT_METHODS = ("rtn", "gptq")

# Step-2 defaults of "two-step", sized for a 2-core CPU run of a 135M model (≈15 min); raise them on
# a GPU (the paper: 128 × 2048 tokens, 10 epochs at 3 bits, 40 at 2 bits).
DEFAULT_EPOCHS = 4
DEFAULT_LR = 1e-3
DEFAULT_LAM = 0.1
DEFAULT_BATCH = 2


def step2_settings(method: str, epochs: Optional[int] = None, lr: Optional[float] = None,
                   batch_size: Optional[int] = None) -> tuple[int, float, int]:
    """``(epochs, lr, batch_size)`` of step 2, each None replaced by the method's default (GPTQ's refine:
    1, 2e-3, 1; two-step: 4, 1e-3, 2)."""
    defaults = ((DEFAULT_REFINE_EPOCHS, DEFAULT_REFINE_LR, DEFAULT_REFINE_BATCH) if method == "gptq" else
                (DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_BATCH))
    given = (epochs, lr, batch_size)
    return tuple(d if v is None else v for v, d in zip(given, defaults))  # type: ignore[return-value]


def check_method(cfg: PoTConfig | IntConfig, method: str) -> None:
    """Reject impossible combinations up front (clear message, before any work)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(cfg, IntConfig) and method not in INT_METHODS:
        raise ValueError(f"method {method!r} calibrates PoT scales; uniform int (kind 'int') supports {INT_METHODS}")
    if not isinstance(cfg, (PoTConfig, IntConfig)):
        raise TypeError(f"cfg must be a PoTConfig or IntConfig, got {type(cfg).__name__}")


def calibrate_model(model: nn.Module, cfg: PoTConfig | IntConfig, calib_ids: Optional[torch.Tensor] = None,
                    method: Method = "two-step", epochs: Optional[int] = None, lr: Optional[float] = None,
                    lam: float = DEFAULT_LAM, batch_size: Optional[int] = None,
                    device: Optional[str | torch.device] = None, skip: Iterable[str] = ("lm_head",),
                    act_dtype: Optional[torch.dtype] = None, progress: bool = True, seed: int = 0,
                    act_weighted: Optional[bool] = None, refine: bool = False, damp: float = DEFAULT_DAMP,
                    act_order: bool = True, true_sequential: bool = False, scale_fits: int = DEFAULT_SCALE_FITS,
                    gptq_block_size: int = DEFAULT_BLOCK_SIZE, hessian_batch: int = 8, offload: bool = False,
                    work_dir: Optional[str | Path] = None, resume: bool = False,
                    warn_sqnr_db: Optional[float] = SQNR_WARN_DB) -> nn.Module:
    """Quantize ``model`` in place with calibrated scales.

    Args:
        model: a GPT-2 or Llama-family causal LM in float.
        cfg: :class:`PoTConfig` (any method) or :class:`IntConfig` (``"rtn"``, ``"gptq"``).
        calib_ids: LongTensor ``[n_samples, seq_len]`` of calibration windows (``"two-step"``,
            ``"gptq"``, activation-weighted ``"init"``).
        method: ``"rtn"`` round-to-nearest scales; ``"init"`` PoTPTQ step 1 (data-free grid
            search); ``"two-step"`` step 1 then step 2 (block-wise Γ refinement on ``calib_ids``);
            ``"gptq"`` scales from (activation-weighted) step 1, then GPTQ's error-compensating
            rounding onto the PoT (or int, min/max scales) grid, see :mod:`calibration.gptq`.
        epochs, lr, lam, batch_size: step-2 Adam epochs over the samples, learning rate, λ of
            the Γ regulariser, samples per step (``"two-step"``, and ``"gptq"`` with ``refine``);
            None: the method's default (:func:`step2_settings`).
        refine: ``"gptq"`` only: afterwards learn Γ per group with the GPTQ codes frozen.
        damp, act_order, true_sequential, gptq_block_size, hessian_batch: ``"gptq"`` settings
            (damping fraction of mean diag H, column order by decreasing diag H, groups of linears
            quantized in call order inside a block, lazy-batch width, samples per Hessian forward).
        device: where to run (without ``offload`` the model is moved there and stays there); default: its device.
        offload: block by block (data methods): the model stays on the CPU (or on the meta device, loaded with
            :func:`potkernels.models.load_lazy`), each block is read, moved to ``device``, calibrated, packed
            and moved back; activations between blocks stay on the CPU (:mod:`calibration.stream`). Same codes
            as without. A lazily loaded model needs it; the model is returned on the CPU.
        work_dir: data methods: save each finished block (packed) and the next block's inputs here, so that
            ``resume`` can continue after a crash or Ctrl-C; without ``resume`` an old run there is cleared.
        resume: continue the run saved in ``work_dir`` (same settings, data and model, else ValueError
            before any work) from its first unfinished block; the result equals an uninterrupted run's.
        warn_sqnr_db: one :class:`~potkernels.LowSQNRWarning` at the end names every
            layer with a weight group whose SQNR is below this (``None``: no warning); see
            :func:`potkernels.quantize_model`.
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
    epochs, lr, batch_size = step2_settings(method, epochs, lr, batch_size)
    if act_weighted is None:
        act_weighted = method in DATA_METHODS and calib_ids is not None and isinstance(cfg, PoTConfig)
    if act_weighted and method == "rtn":
        raise ValueError("act_weighted applies to the step-1 search; method 'rtn' has none (use 'init' or 'two-step')")
    if act_weighted and isinstance(cfg, IntConfig):
        raise ValueError("act_weighted weights the PoT step-1 search; int GPTQ uses min/max scales")
    if refine and method != "gptq":
        raise ValueError(f"refine (step 2 with the codes frozen) follows GPTQ; method {method!r} has no codes to keep "
                         "(use method 'two-step' for step 2)")
    if act_weighted and calib_ids is None:
        raise ValueError("act_weighted needs calibration data (calib_ids [n_samples, seq_len])")
    block_wise = method in DATA_METHODS or (method == "init" and act_weighted)
    if resume and work_dir is None:
        raise ValueError("resume continues the run saved in work_dir; give work_dir")
    if (resume or work_dir is not None) and not block_wise:
        raise ValueError(f"work_dir / resume save finished blocks of a block-wise calibration; method {method!r} "
                         "(data-free) has none")
    lazy = getattr(model, "lazy_weights", None)
    if lazy is not None and lazy.pending(model) and not offload:
        raise ValueError("the model was loaded lazily (its blocks are not in memory): calibrate it with offload=True")
    if lazy is not None and not block_wise:  # data-free methods quantize the whole model at once
        lazy.materialize(model)
    if device is not None and not offload:
        model.to(device)
    model.eval()
    skip = tuple(skip)
    t0 = time.perf_counter()
    info: dict = {"method": method, "config": cfg.to_dict(), "act_weighted": act_weighted}
    if method == "rtn":
        quantize_model(model, cfg, skip=skip, warn_sqnr_db=None)
    elif method == "init" and not act_weighted:
        quantize_model(model, cfg, skip=skip, params=lambda _n, m: {"scales": init_scales(float_weight(m), cfg)},
                       warn_sqnr_db=None)
    else:
        if calib_ids is None:
            raise ValueError(f"method {method!r} needs calibration data (calib_ids [n_samples, seq_len])")
        if method == "init":  # activation-weighted step 1 alone: the block-wise pass with no step 2
            epochs = 0
        if calib_ids.dim() != 2 or calib_ids.dtype != torch.long or calib_ids.numel() == 0:
            raise ValueError(f"calib_ids must be a non-empty LongTensor [n_samples, seq_len], got "
                             f"{calib_ids.dtype} {tuple(calib_ids.shape)}")
        if epochs < 0 or lr <= 0 or lam < 0 or batch_size < 1:
            raise ValueError(f"need epochs ≥ 0, lr > 0, lam ≥ 0, batch_size ≥ 1; got {epochs}, {lr}, {lam}, {batch_size}")
        context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) \
            if hasattr(model, "config") else None
        if context and calib_ids.shape[1] > context:
            raise ValueError(f"calibration windows of {calib_ids.shape[1]} tokens exceed the model's context of "
                             f"{context}; use windows of ≤ {context} tokens")
        if method == "gptq":
            if not 0 <= damp < 1 or gptq_block_size < 1 or hessian_batch < 1:
                raise ValueError(f"need 0 ≤ damp < 1, gptq_block_size ≥ 1, hessian_batch ≥ 1; got {damp}, "
                                 f"{gptq_block_size}, {hessian_batch}")
        state = None
        if work_dir is not None:
            settings = {"method": method, "config": cfg.to_dict(), "epochs": epochs, "lr": lr, "lam": lam,
                        "batch_size": batch_size, "seed": seed, "act_weighted": act_weighted, "refine": refine,
                        "damp": damp, "act_order": act_order, "true_sequential": true_sequential,
                        "scale_fits": scale_fits, "gptq_block_size": gptq_block_size, "hessian_batch": hessian_batch,
                        "skip": list(skip), "act_dtype": str(act_dtype)}
            state = ResumeState(work_dir, fingerprint(model, calib_ids, settings), resume)
        loop = BlockLoop(model, device=device, offload=offload, state=state)
        if method == "gptq":
            blocks, layers = gptq_model(model, cfg, calib_ids, batch_size=hessian_batch, skip=skip,
                                        act_weighted=act_weighted, damp=damp, block_size=gptq_block_size,
                                        act_order=act_order, true_sequential=true_sequential,
                                        scale_fits=scale_fits, refine=refine,
                                        epochs=epochs, lr=lr, lam=lam, refine_batch=batch_size, act_dtype=act_dtype,
                                        progress=progress, seed=seed, loop=loop)
            info.update(refine=refine, damp=damp, act_order=act_order, true_sequential=true_sequential,
                        scale_fits=scale_fits, gptq_block_size=gptq_block_size)
        else:
            blocks, layers = refine_model(model, cfg, calib_ids, epochs, lr, lam, batch_size, skip=skip,
                                          act_dtype=act_dtype, progress=progress, seed=seed,
                                          act_weighted=act_weighted, loop=loop)
        # Linears outside the blocks (none in GPT-2 / Llama besides the skipped lm_head) get step 1.
        if any(True for _ in eligible_linears(model, skip)):
            quantize_model(model, cfg, skip=skip, params=None if isinstance(cfg, IntConfig) else
                           lambda _n, m: {"scales": init_scales(float_weight(m), cfg)}, warn_sqnr_db=None)
            layers += model.quantization_report
        if not layers:
            raise ValueError("no linear layer was quantized (check `skip`)")
        model.quantization_report, model.quantization_config = layers, cfg
        if method == "gptq" and not refine:
            epochs = 0
        info.update(samples=calib_ids.shape[0], seq_len=calib_ids.shape[1], epochs=epochs, lr=lr, lam=lam,
                    batch_size=batch_size, blocks=[b.to_dict() for b in blocks], offload=offload,
                    resumed_at_block=state.next_block_at_start if state is not None else None)
    info["seconds"] = time.perf_counter() - t0
    info["summary"] = summarize_report(model.quantization_report)
    model.calibration_report = info
    warn_low_sqnr(model.quantization_report, warn_sqnr_db)
    return model

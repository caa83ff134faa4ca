"""PoTPTQ step 2: refine the step-1 scales block by block on calibration data.

For every group a learnable ``Γ`` (init 0) rescales the step-1 scale, ``Ŝ = S·(1 + Γ)``. The
quantized block uses ``W̃ = sign(W)·Ŝ·2^E`` with ``E`` recomputed from ``Ŝ`` at every step and
detached, so the gradient reaches ``Γ`` only through ``Ŝ``; nothing else is trained. Loss:
``mean((F_fp(X) − F_q(X))²) + (λ/2)·mean(Γ²)``.

Which target. Block ℓ sees ``X``, the outputs of the already *quantized* blocks 0…ℓ−1 (the
inputs it will see at inference), and is fitted to ``F_fp(X)``, the *float* block ℓ on those
same inputs. That is the choice of the public PoTPTQ reimplementation: each block only
answers for its own error, so it cannot overfit 128 samples by "undoing" upstream error, and
only one activation stream (plus its target) has to be kept.

Regulariser scale. Both terms are means (per activation, per group) rather than the paper's
Frobenius sums, so ``λ`` means the same thing for a 576-wide and a 4096-wide block.

Activation-weighted step 1 (``act_weighted``, an extension, not in the paper). PoT has no
zero level, so every weight costs at least ``S``; a plain weight-space search spends that
error evenly over input columns. SmolLM2's attention inputs carry a few channels whose
activations are ~20× the others on every token, and the plain search leaves their (small)
weights badly rounded: 3-bit ``v_proj`` output error 49 % vs 11 % for int RTN. Weighting each
column by its mean x² (the diagonal of XᵀX, as in GPTQ/AWQ-style objectives) fixes the scale
where the output cares, at no extra cost in the search.

The forward of the quantized block uses exactly the stored format: ``Ŝ`` is made
storable (:func:`clamp_scales`: its top level rounded to fp16) with a straight-through gradient, so after training
the block swapped to :class:`PoTLinear` computes what was optimised.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from itertools import chain
from typing import TYPE_CHECKING, Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from potkernels.format.config import PoTConfig
from potkernels.format.pot import clamp_scales, pot_fake_quant, quantize_pot
from potkernels.format.common import sqnr_db
from potkernels.integrations.hf import LayerReport, is_skipped, eligible_linears, quantize_model, set_submodule
from potkernels.nn import float_weight

from .init import init_scales
from .threads import serial

if TYPE_CHECKING:
    from .stream import BlockLoop

log = logging.getLogger("potkernels.calibration")

# Added to the mean-1 activation weights of step 1 (act_weighted): keeps channels that were
# silent on the calibration text from losing their say entirely.
ACT_WEIGHT_FLOOR = 0.01


@dataclass
class BlockReport:
    """One refined block: mean output MSE with step-1 scales and after step 2, and per-layer SQNR."""

    index: int
    loss_init: float
    loss_final: float
    sqnr_init_db: dict[str, float]
    sqnr_final_db: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: ``model.transformer.h`` (GPT-2) or ``model.model.layers`` (Llama family)."""
    for path in ("transformer.h", "model.layers", "model.decoder.layers", "gpt_neox.layers"):
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}: expected model.transformer.h "
        "(GPT-2) or model.model.layers (Llama family)"
    )


class _Captured(Exception):
    """Raised by the block-0 hook to stop the forward once its inputs are known."""


class FakeQuantLinear(nn.Module):
    """A linear layer computing with ``W̃(S·(1+Γ))``; only ``gamma`` ``[N, n_groups]`` is trainable."""

    def __init__(self, module: nn.Module, cfg: PoTConfig, scales: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("weight", float_weight(module).float().clone())  # [N, K]
        self.register_buffer("bias", None if module.bias is None else module.bias.detach().clone())
        self.register_buffer("s", scales.float().to(self.weight.device))  # [N, n_groups] step-1 S
        self.gamma = nn.Parameter(torch.zeros_like(self.s))

    def scales(self) -> torch.Tensor:
        """``Ŝ`` as stored (:func:`clamp_scales`) in the forward; identity gradient to ``Ŝ = S·(1+Γ)``."""
        s_hat = self.s * (1 + self.gamma)
        stored = clamp_scales(s_hat.detach(), self.cfg.bits).float()
        return s_hat + (stored - s_hat).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = pot_fake_quant(self.weight, self.scales(), self.cfg)
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _block_out(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _cast_tree(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_cast_tree(o, device) for o in obj)
    if isinstance(obj, list):
        return [_cast_tree(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast_tree(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_block_inputs(model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor, batch_size: int,
                         act_dtype: torch.dtype) -> tuple[list[torch.Tensor], dict[int, tuple]]:
    """Run the model on ``ids [n, seq]`` until block 0 and keep what block 0 receives.

    Returns ``(xs, extras)``: ``xs`` one ``[b, seq, hidden]`` tensor (``act_dtype``) per batch,
    and ``extras[b] = (args, kwargs)`` the other arguments block 0 got for a batch of ``b``
    samples (attention mask, position ids, rotary ``position_embeddings`` …). All windows have
    the same length and no padding, so these depend only on the batch size.
    """
    device = next(model.parameters()).device
    xs: list[torch.Tensor] = []
    extras: dict[int, tuple] = {}

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        xs.append(hidden.detach().to(act_dtype))
        extras.setdefault(hidden.shape[0], (tuple(args[1:]), dict(kwargs)))
        raise _Captured

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, ids.shape[0], batch_size):
            try:
                model(ids[i : i + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    for b, (args, kwargs) in extras.items():
        kwargs.pop("hidden_states", None)
        extras[b] = (args, kwargs)
    return xs, extras


def _run(block: nn.Module, x: torch.Tensor, extras: dict[int, tuple], dtype: torch.dtype) -> torch.Tensor:
    """``block`` on one batch ``x`` (moved to the block's device: activations may live on the CPU)."""
    args, kwargs = extras[x.shape[0]]
    device = next(chain(block.parameters(), block.buffers())).device
    return _block_out(block(x.to(device=device, dtype=dtype), *args, **kwargs))


def _layer_sqnr(w: torch.Tensor, s: torch.Tensor, cfg: PoTConfig) -> float:
    return sqnr_db(w, quantize_pot(w, cfg, scales=s).dequantize(torch.float16))


@dataclass
class BlockResult:
    """What :func:`refine_block` learned for one block (names relative to the block)."""

    init: dict[str, torch.Tensor]  # step-1 scales, float32 [N, n_groups]
    scales: dict[str, torch.Tensor]  # refined level scales, storable (clamp_scales), float32 [N, n_groups]
    loss_init: float  # mean output MSE with the step-1 scales
    loss_final: float  # … with the returned scales
    outputs: list[torch.Tensor]  # the quantized block's outputs on xs (the next block's inputs)


def fit_gammas(block: nn.Module, gammas: list[nn.Parameter], xs: list[torch.Tensor], targets: list[torch.Tensor],
               extras: dict[int, tuple], epochs: int, lr: float, lam: float,
               seed: int = 0) -> tuple[list[torch.Tensor], float, float]:
    """Adam on ``gammas`` (the only trainable tensors) to fit ``block(x)`` to ``targets`` (step 2's loop).

    The block's own parameters are frozen for the duration. Loss per step:
    ``mse(block(x), y) + (λ/2)·mean(Γ²)``, one sample batch ``xs[i]`` at a time, ``epochs`` passes in
    a seeded random order. If training did not lower the output MSE on ``xs``, the Γ are reset to
    0. Returns ``(outputs, loss_init, loss_final)``: the block's outputs on ``xs`` with the final Γ
    (dtype of ``xs``) and the mean output MSE before/after.
    """
    dtype = next(block.parameters()).dtype

    @torch.no_grad()
    def quantized_outputs() -> tuple[list[torch.Tensor], float]:
        outs = [_run(block, x, extras, dtype) for x in xs]
        with serial():  # decides whether the scales are kept: one reduction order at any thread count
            tot = sum(float(F.mse_loss(o.float(), y.to(o.device).float(), reduction="sum"))
                      for o, y in zip(outs, targets))
        return [o.to(x.device, x.dtype) for o, x in zip(outs, xs)], tot / sum(y.numel() for y in targets)

    frozen = [(p, p.requires_grad) for p in block.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for g in gammas:
            g.requires_grad_(True)
        outputs, loss_init = quantized_outputs()
        loss_final = loss_init
        if epochs > 0:
            opt = torch.optim.Adam(gammas, lr=lr)
            n_gamma = sum(g.numel() for g in gammas)
            order = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                for i in torch.randperm(len(xs), generator=order).tolist():
                    out = _run(block, xs[i], extras, dtype).float()
                    reg = sum(g.square().sum() for g in gammas) / n_gamma
                    loss = F.mse_loss(out, targets[i].to(out.device).float()) + lam / 2 * reg
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            outputs, loss_final = quantized_outputs()
            if not loss_final <= loss_init:
                # Adam's fixed-size steps can overshoot on a few samples; never return scales that
                # do worse on the calibration set than the start did.
                for g in gammas:
                    g.data.zero_()
                outputs, loss_final = quantized_outputs()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return outputs, loss_init, loss_final


def input_channel_weights(sq_sum: torch.Tensor, floor: float = ACT_WEIGHT_FLOOR) -> torch.Tensor:
    """Per-input-channel error weights from ``Σ x²`` ``[K]``: normalised to mean 1, plus ``floor``
    so a channel that was silent on the calibration text still counts a little."""
    return sq_sum / sq_sum.mean().clamp_min(torch.finfo(torch.float32).tiny) + floor


def refine_block(block: nn.Module, names: Iterable[str], xs: list[torch.Tensor], extras: dict[int, tuple],
                 cfg: PoTConfig, epochs: int, lr: float, lam: float, seed: int = 0,
                 act_weighted: bool = False) -> BlockResult:
    """Learn ``Γ`` for the linears ``names`` of ``block`` (the block is left unchanged) on inputs ``xs``.

    Step 1 is the data-free grid search, or with ``act_weighted`` the same search with each
    input column's error weighted by its mean x² over the block's calibration inputs (the
    float block run on ``xs``). ``epochs=0`` stops after step 1. If refinement did not lower
    the loss on the calibration inputs, the step-1 scales are returned
    (``loss_final == loss_init``). Costs ``2`` block passes over ``xs`` plus ``1 + 3·epochs`` with step 2.
    """
    dtype = next(block.parameters()).dtype
    linears = {name: block.get_submodule(name) for name in names}
    sq_sums: dict[str, torch.Tensor] = {}

    def accumulate(name: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            sq = x.square().reshape(-1, x.shape[-1]).sum(0)
            sq_sums[name] = sq_sums[name] + sq if name in sq_sums else sq
        return hook

    hooks = [m.register_forward_pre_hook(accumulate(n)) for n, m in linears.items()] if act_weighted else []
    try:
        with torch.no_grad():
            targets = [_run(block, x, extras, dtype).to(x.device, x.dtype) for x in xs]
    finally:
        for h in hooks:
            h.remove()
    # (a linear the block's forward never called keeps the plain search)
    init = {name: init_scales(float_weight(m), cfg,
                              col_weights=input_channel_weights(sq_sums[name]) if name in sq_sums else None)
            for name, m in linears.items()}
    fq = {name: FakeQuantLinear(m, cfg, init[name]) for name, m in linears.items()}
    for name, m in fq.items():
        set_submodule(block, name, m)
    try:
        outputs, loss_init, loss_final = fit_gammas(block, [m.gamma for m in fq.values()], xs, targets, extras,
                                                    epochs, lr, lam, seed)
        scales = {name: m.scales().detach().clone() for name, m in fq.items()}
    finally:
        for name, m in linears.items():
            set_submodule(block, name, m)
    return BlockResult(init, scales, loss_init, loss_final, outputs)


def default_act_dtype(model_dtype: torch.dtype, n_values: int) -> torch.dtype:
    """Activations kept between blocks: the model dtype, or fp16 for fp32 models whose two
    activation sets (inputs + targets) would exceed 2 GiB in fp32."""
    if model_dtype != torch.float32:
        return model_dtype
    return torch.float32 if 2 * 4 * n_values <= 2 * 2**30 else torch.float16


def block_stream(model: nn.Module, calib_ids: torch.Tensor, batch_size: int,
                 act_dtype: Optional[torch.dtype] = None
                 ) -> tuple[nn.ModuleList, torch.dtype, torch.dtype, list[torch.Tensor], dict[int, tuple]]:
    """What a block-by-block calibration starts from: ``(blocks, model dtype, activation dtype, xs, extras)``.

    ``act_dtype`` defaults to :func:`default_act_dtype` for ``calib_ids [n, seq]``; ``xs``/``extras`` are
    block 0's inputs from :func:`capture_block_inputs` (``batch_size`` samples per tensor)."""
    blocks = find_blocks(model)
    dtype = next(model.parameters()).dtype
    hidden = getattr(getattr(model, "config", None), "hidden_size", 1)
    if act_dtype is None:
        act_dtype = default_act_dtype(dtype, calib_ids.numel() * hidden)
    xs, extras = capture_block_inputs(model, blocks, calib_ids, batch_size, act_dtype)
    return blocks, dtype, act_dtype, xs, extras


def refine_model(model: nn.Module, cfg: PoTConfig, calib_ids: torch.Tensor, epochs: int, lr: float, lam: float,
                 batch_size: int, skip: Iterable[str] = ("lm_head",), act_dtype: Optional[torch.dtype] = None,
                 progress: bool = True, seed: int = 0, act_weighted: bool = False,
                 loop: Optional["BlockLoop"] = None) -> tuple[list[BlockReport], list[LayerReport]]:
    """Step 2 over all blocks; swaps each block's linears to :class:`PoTLinear` as it goes.

    Block ℓ is refined on the outputs of the quantized blocks < ℓ, then quantized with its
    refined scales, then run to produce block ℓ+1's inputs. Layers outside the blocks are left
    to the caller. ``loop`` (:class:`calibration.stream.BlockLoop`) says where blocks and activations
    live and where finished blocks are saved (default: all in place, nothing saved). Returns one
    :class:`BlockReport` per block and the swapped layers' :class:`LayerReport` list (full names).
    """
    from .stream import BlockLoop

    loop = loop or BlockLoop(model)
    blocks, dtype, act_dtype, xs, extras = block_stream(model, calib_ids, batch_size, act_dtype)
    start, xs, extras = loop.start(blocks, xs, extras, act_dtype, BlockReport)
    skip = tuple(skip)
    bar = tqdm(range(start, len(blocks)), desc="PoT two-step", unit="block", disable=not progress,
               initial=start, total=len(blocks))
    for idx in bar:
        t0 = time.perf_counter()
        block = loop.enter(blocks[idx])
        prefix, names = block_linears(model, block, skip)
        if not names:
            xs = loop.pass_through(idx, block, xs, extras, dtype, act_dtype)
            continue
        weights = {n: float_weight(block.get_submodule(n)).float() for n in names}
        res = refine_block(block, names, xs, extras, cfg, epochs, lr, lam, seed + idx, act_weighted)
        loss_init, loss_final, init, scales = res.loss_init, res.loss_final, res.init, res.scales
        if not all(math.isfinite(v) for v in (loss_init, loss_final)):
            raise FloatingPointError(f"block {idx}: non-finite calibration loss ({loss_init}, {loss_final})")
        quantize_model(block, cfg, skip=tuple(n for n, _ in eligible_linears(block, skip=()) if n not in scales),
                       params=lambda name, _m: {"scales": scales[name]}, warn_sqnr_db=None)  # the caller warns once
        sq_final = {r.name: r.sqnr_db for r in block.quantization_report}
        block_layers = [replace(r, name=f"{prefix}.{r.name}") for r in block.quantization_report]
        del block.quantization_report, block.quantization_config
        # The swapped PoTLinear block computes exactly the fake-quant outputs (same S and E).
        outputs = [o.to(act_dtype) for o in res.outputs]
        del res
        report = BlockReport(
            idx, loss_init, loss_final,
            {n: _layer_sqnr(weights[n], init[n], cfg) for n in names},
            sq_final,
            time.perf_counter() - t0,
        )
        del weights
        xs = loop.leave(idx, block, outputs, report, block_layers)
        bar.set_postfix(loss=f"{loss_init:.3g}->{loss_final:.3g}")
        log.info("block %d: output MSE %.4g (step 1) -> %.4g (step 2)", idx, loss_init, loss_final)
    return loop.reports, loop.layers


def block_linears(model: nn.Module, block: nn.Module, skip: tuple[str, ...]) -> tuple[str, list[str]]:
    """``(block's qualified name, names inside the block of its linears to quantize)`` under ``skip``."""
    prefix = _qualified_name(model, block)
    return prefix, [n for n, _ in eligible_linears(block, skip=()) if not is_skipped(f"{prefix}.{n}", skip)]


def _qualified_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module is not part of the model")

"""Swap the linear layers of a Hugging Face model (GPT-2 ``Conv1D``, Llama ``nn.Linear``) in place."""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from tqdm.auto import tqdm

from ..format import IntConfig, PoTConfig, sqnr_db
from ..format.common import SQNR_WARN_DB, check_weight, group_sqnr_db
from ..format.common import warn_low_sqnr as _warn_low
from ..nn import _PackedLinear, float_weight, is_conv1d, linear_class_for

log = logging.getLogger("potkernels")


@dataclass
class LayerReport:
    """One swapped layer: its name, ``[out, in]`` shape, storage, weight SQNR and its worst group's
    SQNR (``None`` in reports of checkpoints saved before it was recorded)."""

    name: str
    out_features: int
    in_features: int
    bits_per_weight: float
    sqnr_db: float
    worst_group_sqnr_db: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_report(name: str, w: torch.Tensor, layer: nn.Module) -> LayerReport:
    """The :class:`LayerReport` of packed ``layer`` (PoTLinear / IntLinear) quantized from float ``w [out, in]``,
    both SQNRs on its fp16 reference decode."""
    w_hat = layer.dequantize(torch.float16)
    worst = float(group_sqnr_db(w, w_hat, layer.packed.group_size).min())
    return LayerReport(name, layer.out_features, layer.in_features, layer.packed.bits_per_weight,
                       sqnr_db(w, w_hat), worst)


def warn_low_sqnr(report: list[LayerReport], threshold_db: Optional[float] = SQNR_WARN_DB) -> list[str]:
    """One :class:`~potkernels.LowSQNRWarning` naming every layer whose worst group is below ``threshold_db``.

    ``threshold_db=None`` checks nothing. Returns the names of the layers below it (the warning
    lists them all, worst first, with their worst-group SQNR).
    """
    return _warn_low([(r.name, r.worst_group_sqnr_db) for r in report], threshold_db)


def is_skipped(name: str, skip: Iterable[str]) -> bool:
    """A pattern skips a layer when it equals the last name part, a glob of the full name, or a prefix."""
    for pat in skip:
        if name == pat or name.split(".")[-1] == pat or fnmatch.fnmatch(name, pat) or name.startswith(pat + "."):
            return True
    return False


def eligible_linears(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every ``nn.Linear`` / ``Conv1D`` not matched by ``skip``."""
    skip = tuple(skip)
    for name, module in model.named_modules():
        if isinstance(module, _PackedLinear):
            continue
        if (isinstance(module, nn.Linear) or is_conv1d(module)) and not is_skipped(name, skip):
            yield name, module


def _progress(progress: Optional[bool]) -> bool:
    import sys

    return sys.stderr.isatty() if progress is None else progress


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def quantize_model(model: nn.Module, cfg: PoTConfig | IntConfig, skip: Iterable[str] = ("lm_head",),
                   params: Optional[Callable[[str, nn.Module], dict[str, torch.Tensor]]] = None,
                   verbose: bool = False, progress: Optional[bool] = None,
                   warn_sqnr_db: Optional[float] = SQNR_WARN_DB) -> nn.Module:
    """Replace every eligible linear layer of ``model`` by a :class:`PoTLinear` / :class:`IntLinear`.

    Args:
        model: a GPT-2 or Llama-family model (any ``nn.Module`` with ``nn.Linear``/``Conv1D``).
        cfg: the code to use.
        skip: layer names, last name parts or globs left in float (default: ``lm_head``, so tied
            embeddings stay untouched).
        params: optional ``(name, module) -> {"scales": …}`` with calibrated per-group
            parameters (``[out_features, n_groups]``) for a layer; RTN when it returns ``{}``.
        verbose: also print the report.
        progress: a tqdm bar per layer (default: when stderr is a terminal).
        warn_sqnr_db: one :class:`~potkernels.LowSQNRWarning` names every layer with a group whose weight SQNR
            is below this (default :data:`SQNR_WARN_DB` = 1 dB; ``None``: no warning).
    Every layer is checked (finite float weight, a config that fits) and quantized before any is
    swapped in: on an error, which names the layer, the model is unchanged.

    Returns:
        The same model, modified in place. ``model.quantization_report`` holds one
        :class:`LayerReport` per swapped layer (with its worst group's SQNR), ``model.quantization_config``
        the config and ``model.quantization_skip`` the skip list (``save_quantized`` records both).
    """
    cls = linear_class_for(cfg)
    targets = list(eligible_linears(model, skip))
    if not targets:
        raise ValueError("quantize_model found no nn.Linear/Conv1D layer to quantize (check `skip`)")
    # Check every layer before touching any, so a bad one leaves the model as it was.
    for name, module in targets:
        try:
            check_weight(float_weight(module))
            cfg.groups_in(float_weight(module).shape[1])
        except (TypeError, ValueError) as e:
            raise ValueError(f"layer {name!r}: {e}; no layer was quantized") from e
    # Quantize all into new modules, then swap them in together.
    new: list[tuple[str, nn.Module]] = []
    report: list[LayerReport] = []
    for name, module in tqdm(targets, desc="quantize", unit="layer", disable=not _progress(progress)):
        w = float_weight(module)
        try:
            extra = params(name, module) if params is not None else {}
            layer = cls.from_float(module, cfg, **extra)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"layer {name!r}: {e}; no layer was quantized") from e
        layer.to(w.device)
        report.append(layer_report(name, w, layer))
        new.append((name, layer))
    for name, layer in new:
        set_submodule(model, name, layer)
    model.quantization_report = report
    model.quantization_config = cfg
    model.quantization_skip = list(skip)
    from .serialization import bind_save_pretrained  # lazy: serialization builds on this module

    bind_save_pretrained(model)
    msg = summarize_report(report)
    log.info(msg)
    if verbose:
        print(msg)
    warn_low_sqnr(report, warn_sqnr_db)
    return model


@torch.no_grad()
def dequantize_model(model: nn.Module, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Replace every PoTLinear / IntLinear of ``model`` by an ``nn.Linear`` holding its decoded weight.

    The result computes exactly what the packed layers compute on the reference path (same decoded
    weight, same ``F.linear``), so it is the float reference for tests, and a fast way to run a
    quantized model on a CPU, which has no decode kernel (at float memory cost). ``dtype`` is the
    activation dtype the model will run in (default: that of its first float parameter): weights
    decode to bf16 for bf16 activations, fp16 otherwise, then are stored in ``dtype``. In place.
    """
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    decode_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, _PackedLinear)]:
        w = m.dequantize(decode_dtype)
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=w.device, dtype=dtype)
        lin.weight.copy_(w.to(dtype))
        if m.bias is not None:
            lin.bias.copy_(m.bias.to(dtype))
        set_submodule(model, name, lin)
    return model


def cache_decoded_weights(model: nn.Module, enable: bool = True) -> int:
    """Switch every PoTLinear / IntLinear of ``model`` to decode its weight once and keep it.

    For CPU inference (a CPU has no decode kernel, so by default every forward, i.e. every generated
    token, decodes all weights again: ~35× slower generation on SmolLM2-135M). With the cache the
    first forward decodes each layer and later ones run ``F.linear`` on the kept weight: the same
    result as the reference path, bit for bit, at float speed. Memory cost: one decoded copy per
    layer in the activation dtype (fp32: 4 bytes per weight, i.e. the float model's linear weights
    on top of the packed ones). ``enable=False`` drops the caches. Returns the number of layers.
    """
    layers = [m for m in model.modules() if isinstance(m, _PackedLinear)]
    for m in layers:
        m.cache_decoded = enable
        m._decoded = None
    return len(layers)


def summarize_report(report: list[LayerReport]) -> str:
    sq = [r.sqnr_db for r in report]
    n_w = sum(r.out_features * r.in_features for r in report)
    bpw = sum(r.bits_per_weight * r.out_features * r.in_features for r in report) / n_w
    worst = [r.worst_group_sqnr_db for r in report if r.worst_group_sqnr_db is not None]
    return (f"quantized {len(report)} layers ({n_w / 1e6:.1f} M weights), {bpw:.3f} bits/weight, "
            f"weight SQNR {min(sq):.2f} … {max(sq):.2f} dB (mean {sum(sq) / len(sq):.2f})"
            + (f", worst group {min(worst):.2f} dB" if worst else ""))

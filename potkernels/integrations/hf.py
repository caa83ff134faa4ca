"""Module swapping: the linear layers of a Hugging Face model (GPT-2 ``Conv1D``, Llama ``nn.Linear``) ↔
packed layers, in place, and writing such a model as a checkpoint (:func:`save_quantized`, also behind
``model.save_pretrained``). Builds on :mod:`.checkpoint` (the files); loading is in :mod:`.serialization`."""
from __future__ import annotations

import copy
import fnmatch
import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from safetensors.torch import save_file
from torch import nn

from tqdm.auto import tqdm

from ..format import FORMAT_VERSION, IntConfig, PoTConfig, sqnr_db
from ..format.common import SQNR_WARN_DB, check_weight, group_sqnr_db
from ..format.common import warn_low_sqnr as _warn_low
from ..nn import IntLinear, PoTLinear, _PackedLinear, float_weight, is_conv1d, linear_class_for
from .checkpoint import CONFIG_FILE, FORMAT_NAME, QUANT_FILE, WEIGHTS_FILE, sha256, strip_engine_fields, write_engine_fields

LAYER_CLASSES = {"PoTLinear": PoTLinear, "IntLinear": IntLinear}

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


# ---------------------------------------------------------------- saving
def _dedup_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with tensors that share storage (tied embeddings) kept once.

    Returns (tensors to store, ``{alias name: stored name}``).
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def quantized_layers(model: nn.Module) -> list[dict[str, Any]]:
    """One record per packed layer of ``model``: name, class, shape, bias and its code."""
    return [
        {"name": name, "class": type(m).__name__, "out_features": m.out_features,
         "in_features": m.in_features, "bias": m.bias is not None, "config": m.config.to_dict()}
        for name, m in model.named_modules() if isinstance(m, _PackedLinear)
    ]


def _float_dtype(tensors: dict[str, torch.Tensor], packed_names: set[str]) -> str:
    """The dtype most float parameters have (the model is rebuilt in it)."""
    counts = Counter(str(t.dtype) for n, t in tensors.items() if t.is_floating_point() and n not in packed_names)
    return counts.most_common(1)[0][0].removeprefix("torch.") if counts else "float32"


def _nonpersistent_dtypes(model: nn.Module) -> dict[str, str]:
    """Dtypes of buffers not in the state dict (e.g. rotary ``inv_freq``): ``model.half()`` casts
    them, a model built in fp16 keeps them fp32, so the loader restores the saved model's choice."""
    saved = set(model.state_dict())
    return {n: str(b.dtype).removeprefix("torch.") for n, b in model.named_buffers()
            if n not in saved and b.is_floating_point()}


def _plain_config(config: Any, model_class: Optional[str] = None) -> Any:
    """The model config without a ``quantization_config`` it was loaded with (e.g. the GGUF the
    float model came from, or this checkpoint's own) and without the transformers guard: the
    checkpoint's quantization is described by quantization_config.json (and re-added to config.json
    by :func:`.checkpoint.write_engine_fields`)."""
    config = copy.deepcopy(config)
    strip_engine_fields(config)
    if not getattr(config, "architectures", None) and model_class:
        config.architectures = [model_class]  # as transformers' save_pretrained writes (vLLM picks the model by it)
    return config


def save_quantized(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None,
                   skip: Optional[list[str]] = None) -> Path:
    """Write a quantized model (after :func:`quantize_model`) to the directory ``path``.

    Args:
        model: a Hugging Face model (``model.config``) with at least one PoTLinear/IntLinear.
        path: target directory (created if missing; files of the same names are replaced).
        tokenizer: optional; its files are saved alongside so ``AutoTokenizer.from_pretrained(path)`` works.
        skip: the skip list used when quantizing, recorded for information (default: the one
            ``quantize_model`` stored on the model; the layer list is what loading uses).
    Returns the directory path.
    """
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("save_quantized: the model has no PoTLinear/IntLinear layer; run quantize_model first")
    if not hasattr(model, "config") or not hasattr(model.config, "save_pretrained"):
        raise TypeError("save_quantized needs a Hugging Face model (with a .config); got "
                        f"{type(model).__name__}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _dedup_state_dict(model)
    packed_names = {f"{l['name']}.{b}" for l in layers for b in LAYER_CLASSES[l["class"]].tensor_names}
    cfg = getattr(model, "quantization_config", None)
    top = cfg.to_dict() if hasattr(cfg, "to_dict") else layers[0]["config"]
    report = getattr(model, "quantization_report", None) or []

    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-save-") as tmp_dir:
        tmp = Path(tmp_dir)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "potkernels_format": str(FORMAT_VERSION)})
        os.chmod(tmp / WEIGHTS_FILE, 0o644)  # safetensors creates it owner-only
        _plain_config(model.config, type(model).__name__).save_pretrained(tmp)
        gen = getattr(model, "generation_config", None)
        if gen is not None and hasattr(gen, "save_pretrained"):
            gen.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            **{k: top[k] for k in ("kind", "bits", "group_size")},
            "model_class": type(model).__name__,
            "dtype": _float_dtype(tensors, packed_names),
            "layers": layers,
            "skip": list(skip if skip is not None else getattr(model, "quantization_skip", [])),
            "tied": aliases,
            "buffer_dtypes": _nonpersistent_dtypes(model),
            "report": [r.to_dict() for r in report],
            "weights_file": WEIGHTS_FILE,
            "sha256": sha256(tmp / WEIGHTS_FILE),
        }
        write_engine_fields(tmp / CONFIG_FILE, meta)
        (tmp / QUANT_FILE).write_text(json.dumps(meta, indent=1))
        # Rename into place, the JSON last: a crash midway leaves a checksum that does not match.
        names = sorted(p.name for p in tmp.iterdir() if p.name != QUANT_FILE) + [QUANT_FILE]
        for name in names:
            os.replace(tmp / name, out / name)
    return out


def restore_buffer_dtypes(model: nn.Module, buffer_dtypes: dict[str, str]) -> None:
    """Give non-persistent float buffers (rotary ``inv_freq``) the dtypes the saved model had."""
    for name, dt in buffer_dtypes.items():
        owner_name, _, attr = name.rpartition(".")
        try:
            owner = model.get_submodule(owner_name) if owner_name else model
        except AttributeError:
            continue
        buf = owner._buffers.get(attr)
        dtype = getattr(torch, dt, None)
        if buf is not None and isinstance(dtype, torch.dtype) and buf.dtype != dtype:
            owner._buffers[attr] = buf.to(dtype)


def bind_save_pretrained(model: nn.Module) -> None:
    """Make ``model.save_pretrained(dir)`` write the potkernels checkpoint format (:func:`save_quantized`).

    transformers' own ``save_pretrained`` would write a config without the quantization fields and
    split or rename tensors; this instance method keeps one format whichever way a model is saved.
    A model with no packed layer left (e.g. after ``model.dequantize()``) saves the transformers way.
    """
    if hasattr(model, "config"):
        model.save_pretrained = _PoTSavePretrained(model)


class _PoTSavePretrained:
    """``model.save_pretrained`` for packed models; an object (not a bound method) so that the model
    still pickles and deep-copies (the copy's method then saves the copy)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        return _save_pretrained(self.model, save_directory, *args, **kwargs)


def _save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                     push_to_hub: bool = False, **kwargs: Any) -> None:
    if not any(isinstance(m, _PackedLinear) for m in self.modules()):
        return type(self).save_pretrained(self, save_directory, is_main_process=is_main_process,
                                          push_to_hub=push_to_hub, **kwargs)
    if push_to_hub:
        raise NotImplementedError("push_to_hub is not supported for potkernels models: save_pretrained to a "
                                  "folder, then upload it with `huggingface-cli upload`")
    if kwargs.get("state_dict") is not None:
        raise NotImplementedError("save_pretrained(state_dict=...) is not supported for potkernels models")
    if is_main_process:
        save_quantized(self, save_directory)

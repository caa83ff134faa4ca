"""Save and reload quantized Hugging Face models: one safetensors file + two JSON files.

A checkpoint directory holds (spec: FORMAT.md, "Checkpoint format"):

* ``model.safetensors``         the full state dict: packed buffers (int32 planes, fp16 scales,
                                uint8 zero points) and every float parameter, tied copies stored once;
* ``quantization_config.json``  format name + version, the code (kind/bits/group_size), the model
                                class, every quantized layer (name, class, shape, bias), the skip list,
                                the tied-parameter aliases, the per-layer report and the sha256 of
                                ``model.safetensors``;
* ``config.json``               the model's Hugging Face config (``model.config.save_pretrained``),
                                ``generation_config.json`` when the model has one, and the tokenizer
                                files when a tokenizer is passed.

Reloading rebuilds the architecture from ``config.json`` without random init, swaps the listed
layers for empty :class:`PoTLinear` / :class:`IntLinear` of the recorded shapes, and loads the
tensors strictly: no calibration runs and the logits are identical to the saved model's.
Loading only reads; saving writes every file under a temporary name and renames it into place,
the JSON (which carries the checksum) last.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..format import FORMAT_VERSION, config_from_dict
from ..format.legacy import repack_v1_state_dict
from ..nn import IntLinear, PoTLinear, _PackedLinear, float_weight, is_conv1d
from .hf import LayerReport, set_submodule

FORMAT_NAME = "potkernels"
READ_VERSIONS = (1, FORMAT_VERSION)  # version 1 (bit planes) is repacked to v2 on load
WEIGHTS_FILE = "model.safetensors"
QUANT_FILE = "quantization_config.json"
CONFIG_FILE = "config.json"
LAYER_CLASSES = {"PoTLinear": PoTLinear, "IntLinear": IntLinear}


class CheckpointError(ValueError):
    """A quantized checkpoint that cannot be loaded (corrupt, foreign version, or not matching its config)."""


# ---------------------------------------------------------------- saving
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _plain_config(config: Any) -> Any:
    """The model config without a ``quantization_config`` it was loaded with (e.g. the GGUF the
    float model came from): this checkpoint's quantization is described by quantization_config.json."""
    if getattr(config, "quantization_config", None) is None:
        return config
    config = copy.deepcopy(config)
    del config.quantization_config
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
        _plain_config(model.config).save_pretrained(tmp)
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
            "sha256": _sha256(tmp / WEIGHTS_FILE),
        }
        (tmp / QUANT_FILE).write_text(json.dumps(meta, indent=1))
        # Rename into place, the JSON last: a crash midway leaves a checksum that does not match.
        names = sorted(p.name for p in tmp.iterdir() if p.name != QUANT_FILE) + [QUANT_FILE]
        for name in names:
            os.replace(tmp / name, out / name)
    return out


# ---------------------------------------------------------------- loading
def _read_meta(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory (expected a checkpoint written by save_quantized)")
    missing = [f for f in (QUANT_FILE, CONFIG_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete potkernels checkpoint: missing {', '.join(missing)}")
    try:
        meta = json.loads((folder / QUANT_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder / QUANT_FILE} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{folder / QUANT_FILE} is not a potkernels quantization config")
    if meta.get("format_version") not in READ_VERSIONS:
        raise CheckpointError(
            f"{folder}: unknown checkpoint format version {meta.get('format_version')!r}; this potkernels "
            f"reads versions {list(READ_VERSIONS)}")
    for key in ("kind", "bits", "group_size", "layers", "model_class", "dtype", "tied"):
        if key not in meta:
            raise CheckpointError(f"{folder / QUANT_FILE} lacks the field {key!r}")
    return meta


def _read_tensors(folder: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    weights = folder / WEIGHTS_FILE
    if "sha256" in meta and _sha256(weights) != meta["sha256"]:
        raise CheckpointError(
            f"{weights} does not match the checksum in {QUANT_FILE}: the file is truncated, modified, "
            "or from another save")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e})") from e


def _build_model(folder: Path, meta: dict[str, Any]) -> nn.Module:
    """The float architecture from config.json, without spending time on random init."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    dtype = getattr(torch, meta["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown parameter dtype {meta['dtype']!r} in {QUANT_FILE}")
    cls = getattr(transformers, meta["model_class"], None)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: pay for the random init
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        if cls is not None and hasattr(cls, "_from_config"):
            return cls._from_config(config, dtype=dtype)
        return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)


def _swap_layers(model: nn.Module, layers: list[dict[str, Any]]) -> None:
    for rec in layers:
        name, cls = rec["name"], LAYER_CLASSES.get(rec["class"])
        if cls is None:
            raise CheckpointError(f"layer {name}: unknown class {rec['class']!r} (expected {sorted(LAYER_CLASSES)})")
        try:
            module = model.get_submodule(name)
        except AttributeError as e:
            raise CheckpointError(f"checkpoint lists layer {name!r}, which the model from config.json lacks") from e
        if not (isinstance(module, nn.Linear) or is_conv1d(module)):
            raise CheckpointError(f"layer {name!r} is a {type(module).__name__} in the model, not a linear layer")
        shape = tuple(float_weight(module).shape)
        if shape != (rec["out_features"], rec["in_features"]):
            raise CheckpointError(
                f"layer {name!r}: checkpoint says [out, in] = {[rec['out_features'], rec['in_features']]}, "
                f"the model from config.json has {list(shape)}")
        layer = cls(rec["in_features"], rec["out_features"], config_from_dict(rec["config"]), bias=rec["bias"],
                    device=float_weight(module).device)
        set_submodule(model, name, layer)


def _load_strict(model: nn.Module, tensors: dict[str, torch.Tensor], tied: dict[str, str],
                 buffer_dtypes: dict[str, str]) -> None:
    own = model.state_dict()
    expected = set(own) - set(tied)
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint tensors do not match the model: missing {missing[:8]}{' …' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
    for name, t in tensors.items():
        if t.shape != own[name].shape or t.dtype != own[name].dtype:
            raise CheckpointError(
                f"tensor {name!r}: checkpoint has {t.dtype} {list(t.shape)}, the model expects "
                f"{own[name].dtype} {list(own[name].shape)}")
    model.load_state_dict(tensors, strict=False)
    for name, dt in buffer_dtypes.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        buf = owner._buffers.get(attr)
        dtype = getattr(torch, dt, None)
        if buf is not None and isinstance(dtype, torch.dtype) and buf.dtype != dtype:
            owner._buffers[attr] = buf.to(dtype)
    # Re-tie aliases (e.g. lm_head.weight → model.embed_tokens.weight) to the very same Parameter.
    for alias, target in tied.items():
        owner_name, _, attr = alias.rpartition(".")
        t_owner, _, t_attr = target.rpartition(".")
        owner = model.get_submodule(owner_name)
        setattr(owner, attr, getattr(model.get_submodule(t_owner), t_attr))


def _repack_v1(tensors: dict[str, torch.Tensor], layers: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Version-1 packed tensors → version 2 (same decoded weights), before the strict load."""
    specs = []
    for rec in layers:
        cfg = config_from_dict(rec["config"])
        specs.append((rec["name"], cfg.kind, cfg.bits, rec["in_features"]))
    try:
        return repack_v1_state_dict(tensors, specs)
    except ValueError as e:
        raise CheckpointError(f"cannot repack the version-1 checkpoint: {e}") from e


def load_quantized(path: str | os.PathLike, device: str | torch.device = "cpu",
                   dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_quantized` (no calibration, identical logits).

    Args:
        path: the checkpoint directory.
        device: where to put the model.
        dtype: optional dtype for the float parameters (packed buffers keep their format dtypes).
    Returns the model in eval mode, with ``quantization_config`` and ``quantization_report`` set.
    The tokenizer, if one was saved, loads with ``AutoTokenizer.from_pretrained(path)``.
    Raises FileNotFoundError for missing files and CheckpointError for anything corrupt or mismatched.
    """
    folder = Path(path)
    meta = _read_meta(folder)
    tensors = _read_tensors(folder, meta)
    if meta["format_version"] == 1:
        tensors = _repack_v1(tensors, meta["layers"])
    model = _build_model(folder, meta)
    _swap_layers(model, meta["layers"])
    _load_strict(model, tensors, meta["tied"], meta.get("buffer_dtypes", {}))
    if dtype is not None:
        model.to(dtype)
    model.to(device).eval()
    model.quantization_config = config_from_dict(meta)
    model.quantization_report = [LayerReport(**r) for r in meta.get("report", [])]
    return model


__all__ = ["CheckpointError", "FORMAT_VERSION", "load_quantized", "quantized_layers", "save_quantized"]

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

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..format import FORMAT_VERSION, config_from_dict
from ..nn import _PackedLinear, float_weight, is_conv1d
from .checkpoint import (QUANT_FILE, SAFETENSORS_DTYPES, WEIGHTS_FILE, CheckpointError, check_output_dir,
                         detect_checkpoint, layer_weight, read_checkpoint_meta, read_header, read_meta, read_tensors,
                         strip_engine_fields)
from .hf import (LAYER_CLASSES, LayerReport, bind_save_pretrained, quantized_layers, restore_buffer_dtypes,
                 save_quantized, set_submodule)



# ---------------------------------------------------------------- loading
def _build_model(folder: Path, meta: dict[str, Any], dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The float architecture from config.json, without spending time on random init."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    strip_engine_fields(config)  # they describe the files; the model in memory is built here
    saved = getattr(torch, meta["dtype"], None)
    if not isinstance(saved, torch.dtype):
        raise CheckpointError(f"unknown parameter dtype {meta['dtype']!r} in {QUANT_FILE}")
    dtype = dtype or saved  # built directly in the requested dtype, as from_pretrained(dtype=...) does
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
        if layer.bias is not None and module.bias is not None:
            layer.bias = layer.bias.to(module.bias.dtype)  # the model's float dtype, as the layer replaced
        set_submodule(model, name, layer)


def _load_strict(model: nn.Module, tensors: dict[str, torch.Tensor], tied: dict[str, str],
                 buffer_dtypes: dict[str, str]) -> None:
    _check_tensors_fit(model, {k: (t.dtype, tuple(t.shape), str(t.dtype)) for k, t in tensors.items()}, tied,
                       "checkpoint")
    model.load_state_dict(tensors, strict=False)
    restore_buffer_dtypes(model, buffer_dtypes)
    # Re-tie aliases (e.g. lm_head.weight → model.embed_tokens.weight) to the very same Parameter.
    for alias, target in tied.items():
        owner_name, _, attr = alias.rpartition(".")
        t_owner, _, t_attr = target.rpartition(".")
        owner = model.get_submodule(owner_name)
        setattr(owner, attr, getattr(model.get_submodule(t_owner), t_attr))


def _upgrade_layers(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every packed layer's stored tensors → the current format (:func:`.checkpoint.layer_weight`); a
    current-version checkpoint is left to the strict load's checks, which name every mismatch."""
    if meta["format_version"] == FORMAT_VERSION:
        return tensors
    out = dict(tensors)
    for rec in meta["layers"]:
        prefix = rec["name"] + "."
        mine = {k[len(prefix):]: out.pop(k) for k in [k for k in out if k.startswith(prefix) and k != prefix + "bias"]}
        out.update({prefix + k: t for k, t in layer_weight(rec, mine, meta["format_version"]).tensors().items()})
    return out


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
    meta = read_meta(folder)
    tensors = read_tensors(folder, meta)
    model = _build_model(folder, meta, dtype)
    _swap_layers(model, meta["layers"])
    tensors = _upgrade_layers(tensors, meta)
    _load_strict(model, tensors, meta["tied"], meta.get("buffer_dtypes", {}))
    model.to(device).eval()
    bind_save_pretrained(model)
    model.quantization_config = config_from_dict(meta)
    model.quantization_report = [LayerReport(**r) for r in meta.get("report", [])]
    return model


# ---------------------------------------------------------------- transformers-native loading
# (used by integrations/hf_quantizer.py)
def check_checkpoint_tensors(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Compare the safetensors header with ``model`` (built with its packed layers, any device incl. meta)
    by the rules of :func:`_check_tensors_fit`, before anything loads (transformers casts float tensors
    to the requested dtype)."""
    header = read_header(Path(path))
    _check_tensors_fit(model, {k: (SAFETENSORS_DTYPES.get(dt), shape, dt) for k, (dt, shape) in header.items()},
                       meta.get("tied", {}), str(Path(path) / WEIGHTS_FILE))


def _check_tensors_fit(model: nn.Module, stored: dict[str, tuple[Optional[torch.dtype], tuple[int, ...], str]],
                       tied: dict[str, str], source: str) -> None:
    """Stored tensors ``{name: (dtype or None if unknown, shape, dtype as written)}`` against ``model``.

    Every state-dict entry except the tied aliases must be stored, nothing else; every shape must match;
    packed and integer tensors must have exactly the model's dtype, float tensors any float dtype (they
    are cast on load). Raises :class:`CheckpointError` naming the first problems.
    """
    own = model.state_dict()
    packed = {f"{n}.{t}" for n, m in model.named_modules() if isinstance(m, _PackedLinear) for t in m.tensor_names}
    expected = set(own) - set(tied)
    missing, unexpected = sorted(expected - set(stored)), sorted(set(stored) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} tensors do not match the model: missing {missing[:8]}{' …' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
    for name, (dtype, shape, shown) in stored.items():
        want = own[name]
        exact = name in packed or not want.is_floating_point()
        ok = shape == tuple(want.shape) and dtype is not None and (
            dtype == want.dtype if exact else dtype.is_floating_point)
        if not ok:
            raise CheckpointError(f"tensor {name!r}: {source} has {shown} {list(shape)}, the model expects "
                                  f"{want.dtype} {list(want.shape)}")


def save_checkpoint_dir(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None,
                        overwrite: bool = False) -> Path:
    """:func:`save_quantized` into a sibling temporary folder, then rename it to ``path`` in one step.

    ``path`` must not exist, or be an empty folder, unless ``overwrite`` (then the old folder is
    replaced as a whole, never mixed with the new files). A crash or Ctrl-C leaves ``path`` as it was.
    """
    import shutil

    out = Path(path)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    old = None
    try:
        save_quantized(model, tmp, tokenizer=tokenizer)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / out.name).exists() and not out.exists():
            os.replace(old / out.name, out)  # put the previous checkpoint back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


# Re-exported here (their home is .checkpoint / .hf) so earlier imports keep working.
__all__ = ["CheckpointError", "FORMAT_VERSION", "QUANT_FILE", "WEIGHTS_FILE", "bind_save_pretrained", "check_output_dir",
           "detect_checkpoint", "load_quantized", "quantized_layers", "read_checkpoint_meta", "save_checkpoint_dir",
           "save_quantized"]

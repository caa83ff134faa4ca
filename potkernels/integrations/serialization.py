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
from ..format.legacy import upgrade_state_dict
from ..nn import IntLinear, PoTLinear, _PackedLinear, float_weight, is_conv1d
from .hf import LayerReport, set_submodule

FORMAT_NAME = "potkernels"
READ_VERSIONS = (1, 2, FORMAT_VERSION)  # older versions are upgraded on load (format/legacy.py)
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
    float model came from, or this checkpoint's own) and without the transformers guard: the
    checkpoint's quantization is described by quantization_config.json (and re-added to config.json
    by :func:`_write_transformers_fields`)."""
    if getattr(config, "quantization_config", None) is None and not hasattr(config, "transformers_weights"):
        return config
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if hasattr(config, "transformers_weights"):
        del config.transformers_weights
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
        _write_transformers_fields(tmp / CONFIG_FILE, meta)
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


def _verify_checksum(folder: Path, meta: dict[str, Any]) -> None:
    weights = folder / WEIGHTS_FILE
    if "sha256" in meta and _sha256(weights) != meta["sha256"]:
        raise CheckpointError(
            f"{weights} does not match the checksum in {QUANT_FILE}: the file is truncated, modified, "
            "or from another save")


def _read_tensors(folder: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    weights = folder / WEIGHTS_FILE
    _verify_checksum(folder, meta)
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e})") from e


def _build_model(folder: Path, meta: dict[str, Any], dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The float architecture from config.json, without spending time on random init."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    _strip_transformers_fields(config)  # they describe the files; the model in memory is built here
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


def _upgrade(tensors: dict[str, torch.Tensor], version: int, layers: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Older-version packed tensors → the current version (same decoded weights), before the strict load."""
    specs = []
    for rec in layers:
        cfg = config_from_dict(rec["config"])
        specs.append((rec["name"], cfg.kind, cfg.bits, rec["in_features"]))
    try:
        return upgrade_state_dict(tensors, version, specs)
    except ValueError as e:
        raise CheckpointError(f"cannot upgrade the version-{version} checkpoint: {e}") from e


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
    if meta["format_version"] != FORMAT_VERSION:
        tensors = _upgrade(tensors, meta["format_version"], meta["layers"])
    model = _build_model(folder, meta, dtype)
    _swap_layers(model, meta["layers"])
    _load_strict(model, tensors, meta["tied"], meta.get("buffer_dtypes", {}))
    model.to(device).eval()
    bind_save_pretrained(model)
    model.quantization_config = config_from_dict(meta)
    model.quantization_report = [LayerReport(**r) for r in meta.get("report", [])]
    return model


# ---------------------------------------------------------------- transformers-native loading
# (used by integrations/hf_quantizer.py; kept apart from the format-version logic above)
_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                       "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _write_transformers_fields(config_path: Path, meta: dict[str, Any]) -> None:
    """Add ``quantization_config`` (quant method ``potkernels``) and the ``transformers_weights``
    guard to a saved ``config.json``, so transformers routes it to :class:`PoTHfQuantizer` and,
    without potkernels imported, refuses it instead of loading random weights."""
    from .hf_quantizer import WEIGHTS_GUARD, PoTQuantizationConfig

    qc = PoTQuantizationConfig(bits=meta["bits"], group_size=meta["group_size"], kind=meta["kind"],
                               modules_to_not_convert=list(meta.get("skip", [])),
                               format_version=meta["format_version"])
    d = json.loads(config_path.read_text())
    d["quantization_config"] = qc.to_dict()
    d["transformers_weights"] = WEIGHTS_GUARD
    config_path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def _strip_transformers_fields(config: Any) -> None:
    """Remove, in place, what :func:`_write_transformers_fields` added (an in-memory model keeps a plain config)."""
    for attr in ("quantization_config", "transformers_weights"):
        if hasattr(config, attr):
            delattr(config, attr)


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


def read_checkpoint_meta(path: str | os.PathLike, verify_checksum: bool = True) -> dict[str, Any]:
    """``quantization_config.json`` of a checkpoint after the format and (optionally) sha256 checks."""
    folder = Path(path)
    meta = _read_meta(folder)
    if verify_checksum:
        _verify_checksum(folder, meta)
    return meta


def check_checkpoint_tensors(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Compare the safetensors header with ``model`` (built with its packed layers, any device incl. meta)
    by the rules of :func:`_check_tensors_fit`, before anything loads (transformers casts float tensors
    to the requested dtype)."""
    from safetensors import safe_open

    weights = Path(path) / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as f:
            header = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e})") from e
    _check_tensors_fit(model, {k: (_SAFETENSORS_DTYPES.get(dt), shape, dt) for k, (dt, shape) in header.items()},
                       meta.get("tied", {}), str(weights))


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


def detect_checkpoint(path: str | os.PathLike) -> Optional[str]:
    """What a local folder holds: ``"potkernels"`` (a complete quantized checkpoint), ``None`` (not one).

    Raises :class:`CheckpointError` for a folder that is a damaged potkernels checkpoint: a config.json
    naming potkernels without ``quantization_config.json``, or packed tensors with no quantization
    config at all (these would otherwise load as a float model with random weights).
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    if (folder / QUANT_FILE).is_file():
        _read_meta(folder)
        return "potkernels"
    cfg_file = folder / CONFIG_FILE
    if cfg_file.is_file():
        try:
            qc = json.loads(cfg_file.read_text()).get("quantization_config")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            qc = None
        if isinstance(qc, dict) and qc.get("quant_method") == FORMAT_NAME:
            raise CheckpointError(f"{folder} is a potkernels checkpoint without its {QUANT_FILE}: it cannot be "
                                  "loaded (copy the whole folder, or quantize again)")
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        from safetensors import safe_open

        suffixes = {t for cls in LAYER_CLASSES.values() for t in cls.tensor_names} - {"scales", "bias"}
        try:
            with safe_open(str(weights), framework="pt") as f:
                keys = list(f.keys())
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError):
            return None
        if "potkernels_format" in meta or any(k.rpartition(".")[2] in suffixes for k in keys):
            raise CheckpointError(f"{folder} holds packed potkernels tensors but no {QUANT_FILE}: the "
                                  "checkpoint is incomplete and cannot be loaded")
    return None


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


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise FileExistsError unless ``path`` can take a new checkpoint (before any work is done)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it (as a whole)")
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise PermissionError(f"cannot write {out}: {probe} is not a writable folder")


__all__ = ["CheckpointError", "FORMAT_VERSION", "bind_save_pretrained", "check_output_dir", "detect_checkpoint",
           "load_quantized", "quantized_layers", "save_checkpoint_dir", "save_quantized"]

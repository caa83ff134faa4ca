"""Checkpoint files: names, format versions, checks, and "a layer's stored tensors → a packed weight".

The bottom of the integrations room (spec: FORMAT.md §7). It knows the files on disk and the
format, not ``nn.Module`` models nor any engine: module swapping (``hf.py``, ``serialization.py``),
the transformers quantizer (``hf_quantizer.py``) and the vLLM method (``vllm.py``) build on it, and it
imports none of them. Every reader checks ``format_version`` with :func:`check_format_version` and turns
a layer's stored tensors into the current in-memory weight with :func:`layer_weight`: a new format
version is added in these two places.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..format import FORMAT_VERSION, IntWeight, PoTWeight, config_from_dict
from ..format.legacy import repack_v1_tensors, upgrade_v2_scales

FORMAT_NAME = "potkernels"
QUANT_METHOD = "potkernels"  # config.json's quantization_config.quant_method (transformers, vLLM)
READ_VERSIONS = (1, 2, FORMAT_VERSION)  # load_quantized: older versions are upgraded on load (layer_weight)
# Versions whose packed tensors have the current names and shapes, so that a loader which fills
# buffers as stored (transformers' from_pretrained, vLLM) can read them and then upgrade each layer
# with layer_weight() (v2: the same tensors, PoT scales S instead of v3's top levels S·2^qmax).
IN_PLACE_VERSIONS = (2, FORMAT_VERSION)
WEIGHTS_FILE = "model.safetensors"
QUANT_FILE = "quantization_config.json"
CONFIG_FILE = "config.json"
# The stored layer classes and the packed weight each holds (names as written in quantization_config.json).
LAYER_WEIGHTS = {"PoTLinear": PoTWeight, "IntLinear": IntWeight}
# Written as config.json's ``transformers_weights``: transformers without potkernels raises
# "The transformers file in the config seems to be incorrect: …: <this text>" instead of loading
# random weights (it must not end in .safetensors, or transformers would try to open it).
WEIGHTS_GUARD = ("potkernels checkpoint: run `import potkernels` before from_pretrained (potkernels is not on "
                 "PyPI: `pip install -e .` in a clone of its repository); plain transformers cannot read its packed "
                 "weights")
# The guard text of earlier checkpoints (it named a PyPI package that does not exist); still recognised.
LEGACY_WEIGHTS_GUARDS = ("potkernels checkpoint: run `import potkernels` before from_pretrained "
                         "(pip install potkernels); plain transformers cannot read its packed weights",)
SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                      "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
                      "U8": torch.uint8, "BOOL": torch.bool}


class CheckpointError(ValueError):
    """A quantized checkpoint that cannot be loaded (corrupt, foreign version, or not matching its config)."""


# ---------------------------------------------------------------- versions and layers
def check_format_version(version: Any, source: str, readable: tuple[int, ...] = READ_VERSIONS,
                         reader: str = "this potkernels") -> int:
    """``version`` if ``readable`` holds it, else :class:`CheckpointError` naming ``source`` and ``reader``."""
    if version not in readable:
        raise CheckpointError(f"{source}: unknown checkpoint format version {version!r}; {reader} reads "
                              f"versions {list(readable)}")
    return version


def layer_weight(rec: dict[str, Any], tensors: dict[str, torch.Tensor], version: int) -> PoTWeight | IntWeight:
    """One layer's tensors as stored in a checkpoint of ``version`` → the current packed weight.

    Args:
        rec: the layer's record in ``quantization_config.json`` (``class``, ``in_features``, ``config``…).
        tensors: the layer's stored tensors by short name (``qweight``, ``scales``[, ``zeros``]; v1:
            its bit planes), on any device.
        version: the checkpoint's ``format_version`` (checked by :func:`check_format_version`).
    Returns a validated PoTWeight / IntWeight; raises CheckpointError naming the layer otherwise.
    """
    name = rec.get("name", "?")
    cls = LAYER_WEIGHTS.get(rec.get("class"))
    if cls is None:
        raise CheckpointError(f"layer {name}: unknown class {rec.get('class')!r} (expected {sorted(LAYER_WEIGHTS)})")
    try:
        cfg = config_from_dict(rec["config"])
        k = rec["in_features"]
        try:
            if version == 1:
                tensors = repack_v1_tensors(cfg.kind, cfg.bits, k, tensors)
            if version <= 2 and cfg.kind == "pot":  # v1/v2 store S, v3 the top level S·2^qmax (exact)
                tensors = {**tensors, "scales": upgrade_v2_scales(tensors["scales"], cfg.bits)}
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"layer {name}: cannot upgrade the version-{version} checkpoint: {e}") from e
        w = cls(**{t: tensors[t] for t in cls.expected_for(cfg, k, rec["out_features"])}, in_features=k, config=cfg)
        w.validate()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"layer {name}: its stored tensors do not form a {cls.__name__} ({e})") from e
    return w


# ---------------------------------------------------------------- reading
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_meta(folder: Path) -> dict[str, Any]:
    """``quantization_config.json`` of a complete checkpoint folder, after the format-name and version checks."""
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
    check_format_version(meta.get("format_version"), str(folder))
    for key in ("kind", "bits", "group_size", "layers", "model_class", "dtype", "tied"):
        if key not in meta:
            raise CheckpointError(f"{folder / QUANT_FILE} lacks the field {key!r}")
    return meta


def verify_checksum(folder: Path, meta: dict[str, Any]) -> None:
    weights = folder / WEIGHTS_FILE
    if "sha256" in meta and sha256(weights) != meta["sha256"]:
        raise CheckpointError(
            f"{weights} does not match the checksum in {QUANT_FILE}: the file is truncated, modified, "
            "or from another save")


def read_checkpoint_meta(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """``quantization_config.json`` of a checkpoint after the format and (optionally) sha256 checks."""
    folder = Path(path)
    meta = read_meta(folder)
    if verify:
        verify_checksum(folder, meta)
    return meta


def read_tensors(folder: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors`` (after the checksum check)."""
    weights = folder / WEIGHTS_FILE
    verify_checksum(folder, meta)
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e})") from e


def read_header(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (safetensors dtype string, shape)}`` of ``model.safetensors`` without reading tensors."""
    weights = folder / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e})") from e


# ---------------------------------------------------------------- config.json fields
def quantization_config_dict(kind: str, bits: int, group_size: Optional[int], format_version: int,
                             skip: list[str]) -> dict[str, Any]:
    """config.json's ``quantization_config``: what transformers and vLLM select the method by."""
    return {"quant_method": QUANT_METHOD, "kind": kind, "bits": bits, "group_size": group_size,
            "format_version": format_version, "modules_to_not_convert": list(skip)}


def write_engine_fields(config_path: Path, meta: dict[str, Any]) -> None:
    """Add ``quantization_config`` (quant method ``potkernels``) and the ``transformers_weights`` guard to a
    saved ``config.json``, so transformers and vLLM route it to the potkernels method and, without
    potkernels, refuse it instead of loading random weights."""
    d = json.loads(config_path.read_text())
    d["quantization_config"] = quantization_config_dict(meta["kind"], meta["bits"], meta["group_size"],
                                                        meta["format_version"], meta.get("skip", []))
    d["transformers_weights"] = WEIGHTS_GUARD
    config_path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def strip_engine_fields(config: Any) -> None:
    """Remove, in place, what :func:`write_engine_fields` added (an in-memory model keeps a plain config)."""
    for attr in ("quantization_config", "transformers_weights"):
        if hasattr(config, attr):
            delattr(config, attr)


# ---------------------------------------------------------------- folders
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
        read_meta(folder)
        return "potkernels"
    cfg_file = folder / CONFIG_FILE
    if cfg_file.is_file():
        try:
            qc = json.loads(cfg_file.read_text()).get("quantization_config")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            qc = None
        if isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD:
            raise CheckpointError(f"{folder} is a potkernels checkpoint without its {QUANT_FILE}: it cannot be "
                                  "loaded (copy the whole folder, or quantize again)")
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        suffixes = {"qweight", "zeros"}  # packed-only tensor names ("scales" is a common word)
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


__all__ = ["CONFIG_FILE", "CheckpointError", "FORMAT_NAME", "FORMAT_VERSION", "IN_PLACE_VERSIONS", "LAYER_WEIGHTS",
           "LEGACY_WEIGHTS_GUARDS",
           "QUANT_FILE", "QUANT_METHOD", "READ_VERSIONS", "WEIGHTS_FILE", "WEIGHTS_GUARD", "check_format_version",
           "check_output_dir", "detect_checkpoint", "layer_weight", "quantization_config_dict", "read_checkpoint_meta",
           "read_header", "read_meta", "read_tensors", "strip_engine_fields", "verify_checksum", "write_engine_fields"]

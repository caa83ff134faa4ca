"""Hugging Face integration: swap linear layers for packed ones, save and reload quantized models,
and the transformers quantizer (``quant_method="potkernels"``), registered with transformers as soon as
its quantizer registry is imported (see ``_transformers_hook``)."""
from ._transformers_hook import install as _install_transformers_hook
from .hf import LayerReport, cache_decoded_weights, dequantize_model, eligible_linears, quantize_model
from .serialization import CheckpointError, load_quantized, save_quantized

_install_transformers_hook()

_LAZY = ("PoTHfQuantizer", "PoTQuantizationConfig")


def __getattr__(name: str):
    if name in _LAZY:  # imports transformers' quantizer registry: only when asked for
        from . import hf_quantizer

        return getattr(hf_quantizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CheckpointError", "LayerReport", "PoTHfQuantizer", "PoTQuantizationConfig", "cache_decoded_weights",
           "dequantize_model", "eligible_linears", "load_quantized", "quantize_model", "save_quantized"]

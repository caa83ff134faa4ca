"""Hugging Face integration: swap linear layers for packed ones, save and reload quantized models,
and the transformers quantizer (``quant_method="potkernels"``), registered on import."""
from .hf import LayerReport, cache_decoded_weights, dequantize_model, eligible_linears, quantize_model
from .serialization import CheckpointError, load_quantized, save_quantized
from .hf_quantizer import PoTHfQuantizer, PoTQuantizationConfig

__all__ = ["CheckpointError", "LayerReport", "PoTHfQuantizer", "PoTQuantizationConfig", "cache_decoded_weights",
           "dequantize_model", "eligible_linears", "load_quantized", "quantize_model", "save_quantized"]

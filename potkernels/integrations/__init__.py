"""Hugging Face integration: swap linear layers for packed ones, save and reload quantized models."""
from .hf import LayerReport, dequantize_model, eligible_linears, quantize_model
from .serialization import CheckpointError, load_quantized, save_quantized

__all__ = ["CheckpointError", "LayerReport", "dequantize_model", "eligible_linears", "load_quantized", "quantize_model", "save_quantized"]

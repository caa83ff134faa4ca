"""Hugging Face integration: swap linear layers for packed ones, save and reload quantized models."""
from .hf import LayerReport, eligible_linears, quantize_model

__all__ = ["LayerReport", "eligible_linears", "quantize_model"]

"""potkernels: power-of-two weight quantization for LLMs.

Layers, bottom up: ``format`` (codes, packing, reference decode; spec in FORMAT.md) →
``kernels`` (Triton, one file per batch regime) → ``ops`` (registered custom ops) → ``nn``
(PoTLinear / IntLinear) → ``integrations`` (Hugging Face swap, save/load).
"""
from ._startup import quiet_ctrl_c_at_startup

quiet_ctrl_c_at_startup()  # first: `python -m potkernels|calibration` exits 130 on a Ctrl-C during the imports

from .format import (
    IntConfig,
    IntWeight,
    LowSQNRWarning,
    PoTConfig,
    PoTWeight,
    QuantConfig,
    quantize_weight,
    sqnr_db,
)
from .integrations import CheckpointError, LayerReport, load_quantized, quantize_model, save_quantized
from .nn import IntLinear, PoTLinear
from .ops import dequantize, int_matmul, pot_matmul

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "PoTQuantizationConfig":  # the transformers config class: imports transformers only when used
        from .integrations import PoTQuantizationConfig

        return PoTQuantizationConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointError", "IntConfig", "IntLinear", "IntWeight", "LayerReport", "LowSQNRWarning",
    "PoTConfig", "PoTQuantizationConfig", "PoTLinear", "PoTWeight",
    "QuantConfig", "dequantize", "int_matmul", "load_quantized", "pot_matmul", "quantize_model",
    "quantize_weight", "save_quantized", "sqnr_db",
]

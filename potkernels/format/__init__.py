"""The storage format (version 3): configs, packing, quantize and the reference decode.

Pure PyTorch, no Triton: everything above (kernels, ops, nn, calibration) builds on this.
The written spec is ``potkernels/FORMAT.md``.
"""
from .common import sqnr_db
from .config import GROUP_SIZES, INT_BITS, POT_BITS, IntConfig, PoTConfig, QuantConfig, config_from_dict
from .layout import Layout, layout
from .packing import pack_codes, packed_rows, padded_k, unpack_codes
from .pot import (PoTWeight, clamp_scales, decode_pot, exponent_codes, level_scales, pot_fake_quant, pot_unit_values,
                  quantize_pot, rtn_scales, scale_range, top_scales)
from .uniform import IntWeight, clamp_int_scales, decode_int, quantize_int, rtn_int_params

FORMAT_VERSION = 3  # written by this code; v1 and v2 are read and upgraded (legacy.upgrade_state_dict)

QuantWeight = PoTWeight | IntWeight


def quantize_weight(w, cfg: QuantConfig) -> QuantWeight:
    """Round-to-nearest quantization of ``w [out_features, in_features]`` to the code of ``cfg``."""
    if isinstance(cfg, PoTConfig):
        return quantize_pot(w, cfg)
    if isinstance(cfg, IntConfig):
        return quantize_int(w, cfg)
    raise TypeError(f"cfg must be PoTConfig or IntConfig, got {type(cfg).__name__}")

"""The storage format (version 3): configs, packing, quantize and the reference decode.

Pure PyTorch, no Triton: everything above (kernels, ops, nn, calibration) builds on this.
The written spec is ``potkernels/FORMAT.md``.
"""
import torch

from .common import SQNR_WARN_DB, LowSQNRWarning, group_sqnr_db, sqnr_db, warn_low_sqnr
from .config import GROUP_SIZES, INT_BITS, POT_BITS, IntConfig, PoTConfig, QuantConfig, config_from_dict
from .layout import Layout, layout
from .packing import pack_codes, packed_rows, padded_k, unpack_codes
from .pot import (PoTWeight, clamp_scales, decode_pot, exponent_codes, level_scales, pot_fake_quant, pot_unit_values,
                  quantize_pot, rtn_scales, scale_range, top_scales)
from .uniform import IntWeight, clamp_int_scales, decode_int, quantize_int, rtn_int_params

FORMAT_VERSION = 3  # written by this code; v1 and v2 are read and upgraded (legacy.upgrade_state_dict)

QuantWeight = PoTWeight | IntWeight


def quantize_weight(w, cfg: QuantConfig, *, warn_sqnr_db: float | None = SQNR_WARN_DB) -> QuantWeight:
    """Round-to-nearest quantization of ``w [out_features, in_features]`` to the code of ``cfg``.

    Warns (:class:`LowSQNRWarning`, naming the worst group's row and index) when a group's SQNR on the
    fp16 decode is below ``warn_sqnr_db`` (default :data:`SQNR_WARN_DB` = 1 dB; ``None``: no check).
    """
    if isinstance(cfg, PoTConfig):
        q = quantize_pot(w, cfg)
    elif isinstance(cfg, IntConfig):
        q = quantize_int(w, cfg)
    else:
        raise TypeError(f"cfg must be PoTConfig or IntConfig, got {type(cfg).__name__}")
    if warn_sqnr_db is not None:
        db = group_sqnr_db(w, q.dequantize(torch.float16), q.group_size)
        row, grp = divmod(int(db.argmin()), db.shape[1])
        warn_low_sqnr([(f"weight [row {row}, group {grp}]", float(db.min()))], warn_sqnr_db)
    return q

"""The uniform asymmetric int code, the baseline PoT is compared with.

w ≈ (q − z) · s with q ∈ [0, 2^b − 1] packed in the v2 int layout (``layout.py``, Marlin-style pairs),
one fp16 scale s and one uint8 zero point z per group. ``(q − z)`` has at most 9 bits and s
11 significant bits, so the product is exact in fp32 and the decode is one rounding to the
output dtype: bit-exact whether computed in fp32 or directly in fp16.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import PackedWeight, check_decode_dtype, check_weight, expand_groups, group_mask, grouped
from .config import IntConfig
from .packing import pack_codes, packed_rows, unpack_codes

INT_SCALE_MIN = 2.0**-24  # smallest positive fp16 (subnormal scales decode exactly too)


def clamp_int_scales(scales: torch.Tensor, bits: int) -> torch.Tensor:
    """fp16 scales with ``(2^b − 1) · s`` finite in fp16."""
    if not bool(torch.isfinite(scales).all()):
        raise ValueError("int scales must be finite")
    hi = 65504.0 / (2**bits - 1)
    return scales.float().clamp(INT_SCALE_MIN, hi).to(torch.float16).clamp(INT_SCALE_MIN, hi)


def rtn_int_params(w: torch.Tensor, cfg: IntConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero point per group over the real columns, the range widened to
    include 0: float32 ``[N, n_groups]`` each."""
    k = w.shape[1]
    g, _ = cfg.groups_in(k)
    wg = grouped(w.float(), g)
    real = group_mask(k, g, w.device)
    # The range always contains 0, so z ∈ [0, 2^b − 1] and a one-signed group is not clipped.
    mn = wg.masked_fill(~real, float("inf")).amin(dim=-1).clamp(max=0)
    mx = wg.masked_fill(~real, float("-inf")).amax(dim=-1).clamp(min=0)
    scales = (mx - mn) / cfg.qmax
    zeros = torch.round(-mn / clamp_int_scales(scales, cfg.bits).float())
    return scales, zeros


@dataclass
class IntWeight(PackedWeight):
    """A packed uniform-int weight of logical shape ``[out_features, in_features]``.

    Tensors (N = out_features, K = in_features):
        qweight: int32 ``[packed_rows(K, bits), N]`` codes q, v2 int layout (see layout.py)
        scales:  fp16  ``[n_groups, N]``
        zeros:   uint8 ``[n_groups, N]`` zero points z ∈ [0, 2^b − 1]
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    in_features: int
    config: IntConfig

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"qweight": self.qweight, "scales": self.scales, "zeros": self.zeros}

    @staticmethod
    def expected_for(config: IntConfig, in_features: int, out_features: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Buffer name → (dtype, shape) of a layer: the single source of truth for names and shapes."""
        k, n = in_features, out_features
        n_groups = config.groups_in(k)[1]
        return {"qweight": (torch.int32, (packed_rows(k, config.bits), n)), "scales": (torch.float16, (n_groups, n)),
                "zeros": (torch.uint8, (n_groups, n))}

    def expected(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return self.expected_for(self.config, self.in_features, self.out_features)

    def validate(self) -> None:
        """Raise ValueError if the tensors do not fit the declared shape and config."""
        self.check_tensors()
        b = self.config.bits
        if int(self.zeros.max()) > self.config.qmax:
            raise ValueError(f"IntWeight.zeros exceed {self.config.qmax} for bits={b}")
        if not bool(torch.isfinite(self.scales).all()):
            raise ValueError("IntWeight.scales must be finite")

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight, "int", self.config.bits, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        return decode_int(self.codes(), self.scales, self.zeros, self.group_size, dtype)


def decode_int(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
               dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """``(q − z) · s`` → ``[N, K]`` of ``dtype`` (exact product in fp32, one rounding)."""
    check_decode_dtype(dtype)
    k = q.shape[1]
    z = expand_groups(zeros.to(torch.int32), group_size, k)
    s = expand_groups(scales.float(), group_size, k)
    return ((q.to(torch.int32) - z).float() * s).to(dtype)


def quantize_int(w: torch.Tensor, cfg: IntConfig, scales: torch.Tensor | None = None,
                 zeros: torch.Tensor | None = None) -> IntWeight:
    """Quantize ``[N, K]`` to packed uniform int codes (RTN min/max unless scales/zeros given,
    each ``[N, n_groups]``)."""
    check_weight(w)
    n, k = w.shape
    g, n_groups = cfg.groups_in(k)
    if scales is None or zeros is None:
        rs, rz = rtn_int_params(w, cfg)
        scales = rs if scales is None else scales
        zeros = rz if zeros is None else zeros
    for name, t in (("scales", scales), ("zeros", zeros)):
        if tuple(t.shape) != (n, n_groups):
            raise ValueError(f"{name} must be [out_features, n_groups] = {(n, n_groups)}, got {tuple(t.shape)}")
    s16 = clamp_int_scales(scales.to(w.device), cfg.bits)
    z = torch.round(zeros.to(w.device).float()).clamp(0, cfg.qmax)
    s_full = s16.float().repeat_interleave(g, dim=1)[:, :k]
    z_full = z.repeat_interleave(g, dim=1)[:, :k]
    q = (torch.round(w.float() / s_full) + z_full).clamp(0, cfg.qmax).to(torch.int32)
    return IntWeight(
        qweight=pack_codes(q, "int", cfg.bits),
        scales=s16.t().contiguous(),
        zeros=z.to(torch.uint8).t().contiguous(),
        in_features=k,
        config=cfg,
    )


__all__ = ["IntWeight", "quantize_int", "decode_int", "rtn_int_params", "clamp_int_scales"]

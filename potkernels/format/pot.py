"""The power-of-two (PoT) code: quantize, pack, and the reference decode.

w ≈ (-1)^p · S · 2^E with p a sign bit, E ∈ [0, qmax] an unsigned exponent code and S one fp16
scale per group (the smallest magnitude level). Decoding needs no multiply: add ``E << 10``
into the fp16 bits of S (``E << 7`` for bf16) and OR in the sign bit. That is exactly
``sign · S · 2^E`` provided S is a *normal* number and the exponent field cannot overflow,
so scales are clamped into :func:`scale_range` when quantizing (see FORMAT.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import PackedWeight, check_decode_dtype, check_weight, expand_groups, group_mask, grouped
from .config import PoTConfig
from .packing import pack_codes, packed_rows, unpack_codes

FP16_MIN_NORMAL = 2.0**-14
# fp16 / bf16 mantissa widths: where the exponent field starts in the 16-bit pattern.
MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7}


def scale_range(bits: int) -> tuple[float, float]:
    """Smallest and largest fp16 scale S for which ``S · 2^qmax`` decodes by integer add.

    S must be normal (exponent field ≥ 1) and its exponent field + qmax ≤ 30 (fp16's largest
    finite exponent field), i.e. S < 2^(16 - qmax).
    """
    qmax = 2 ** (bits - 1) - 1
    largest = (2.0 - 2.0**-10) * 2.0 ** (15 - qmax)
    return FP16_MIN_NORMAL, largest


def clamp_scales(scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Round scales to fp16 inside :func:`scale_range` (NaN rejected): the stored S."""
    if not bool(torch.isfinite(scales).all()):
        raise ValueError("PoT scales must be finite")
    lo, hi = scale_range(bits)
    return scales.float().clamp(lo, hi).to(torch.float16).clamp(lo, hi)


def rtn_scales(w: torch.Tensor, cfg: PoTConfig) -> torch.Tensor:
    """Round-to-nearest scale: the group's largest magnitude lands on the top level S·2^qmax.

    Returns float32 ``[N, n_groups]`` (unclamped; :func:`clamp_scales` makes it storable).
    """
    g, _ = cfg.groups_in(w.shape[1])
    return grouped(w.float().abs(), g).amax(dim=-1) / 2.0**cfg.qmax


def exponent_codes(w: torch.Tensor, scales: torch.Tensor, qmax: int) -> torch.Tensor:
    """E = clamp(round(log2(|w| / S)), 0, qmax), rounding in the log domain.

    Args: ``w [N, K]`` float, ``scales [N, K]`` positive (already expanded per weight).
    Returns int32 ``[N, K]``. ``w == 0`` gives E = 0.
    """
    ratio = w.float().abs() / scales.float()
    return torch.round(torch.log2(ratio)).clamp(0, qmax).nan_to_num(0).to(torch.int32)


@dataclass
class PoTWeight(PackedWeight):
    """A packed PoT weight of logical shape ``[out_features, in_features]``.

    Tensors (N = out_features, K = in_features):
        qexp:   int32 ``[packed_rows(K, bits-1), N]`` exponent codes, bit planes (see packing.py)
        qsign:  int32 ``[ceil(K/32), N]`` sign bits (1 = negative), 32 per word, apart from E
        scales: fp16  ``[n_groups, N]`` the per-group S, inside :func:`scale_range`
    """

    qexp: torch.Tensor
    qsign: torch.Tensor
    scales: torch.Tensor
    in_features: int
    config: PoTConfig

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"qexp": self.qexp, "qsign": self.qsign, "scales": self.scales}

    def expected(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        n, k, b = self.out_features, self.in_features, self.config.bits
        return {"qexp": (torch.int32, (packed_rows(k, b - 1), n)), "qsign": (torch.int32, (packed_rows(k, 1), n)),
                "scales": (torch.float16, (self.config.groups_in(k)[1], n))}

    def validate(self) -> None:
        """Raise ValueError if the tensors do not fit the declared shape and config."""
        self.check_tensors()
        b = self.config.bits
        lo, hi = scale_range(b)
        s = self.scales.float()
        if not bool(((s >= lo) & (s <= hi)).all()):
            raise ValueError(f"PoTWeight.scales outside the decodable range [{lo}, {hi}] for bits={b}")

    def codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpacked (E, sign) as int32 ``[N, K]`` each."""
        e = unpack_codes(self.qexp, self.config.bits - 1, self.in_features)
        p = unpack_codes(self.qsign, 1, self.in_features)
        return e, p

    def dequantize(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """Reference decode → ``[out_features, in_features]`` in fp16 or bf16 (bit-exact)."""
        e, p = self.codes()
        return decode_pot(e, p, self.scales, self.group_size, dtype)


def decode_pot(e: torch.Tensor, sign: torch.Tensor, scales: torch.Tensor, group_size: int,
               dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Build ``(-1)^sign · S · 2^E`` by integer arithmetic on the scale's bits.

    Args:
        e, sign: int ``[N, K]`` exponent codes and sign bits.
        scales: fp16 ``[n_groups, N]`` (normal, inside scale_range).
        dtype: torch.float16 (E << 10) or torch.bfloat16 (S rounded to bf16, then E << 7).
    Returns ``[N, K]`` of ``dtype``.
    """
    check_decode_dtype(dtype)
    s_bits = scales.to(dtype).view(torch.int16).to(torch.int32)  # S > 0: bit 15 clear, no sign extension
    s_bits = expand_groups(s_bits, group_size, e.shape[1])
    bits = (s_bits + (e.to(torch.int32) << MANTISSA_BITS[dtype])) | (sign.to(torch.int32) << 15)
    bits = torch.where(bits >= 2**15, bits - 2**16, bits)  # uint16 pattern → int16
    return bits.to(torch.int16).view(dtype)


def quantize_pot(w: torch.Tensor, cfg: PoTConfig, scales: torch.Tensor | None = None) -> PoTWeight:
    """Quantize a float weight ``[N, K]`` to packed PoT codes.

    Args:
        w: ``[out_features, in_features]`` floating, finite.
        cfg: bits and group size.
        scales: optional ``[N, n_groups]`` per-group S (e.g. from calibration); default
            :func:`rtn_scales`. Clamped into :func:`scale_range` and rounded to fp16; E is then
            rounded against the stored fp16 S, so decoding reproduces exactly what was chosen.
    """
    check_weight(w)
    n, k = w.shape
    g, n_groups = cfg.groups_in(k)
    if scales is None:
        scales = rtn_scales(w, cfg)
    if tuple(scales.shape) != (n, n_groups):
        raise ValueError(f"scales must be [out_features, n_groups] = {(n, n_groups)}, got {tuple(scales.shape)}")
    s16 = clamp_scales(scales.to(w.device), cfg.bits)  # [N, n_groups]
    e = exponent_codes(w, s16.float().repeat_interleave(g, dim=1)[:, :k], cfg.qmax)
    sign = (w < 0).to(torch.int32)
    return PoTWeight(
        qexp=pack_codes(e, cfg.exp_bits),
        qsign=pack_codes(sign, 1),
        scales=s16.t().contiguous(),
        in_features=k,
        config=cfg,
    )


def pot_fake_quant(w: torch.Tensor, scales: torch.Tensor, cfg: PoTConfig) -> torch.Tensor:
    """Differentiable PoT round trip in float: ``sign(w) · S · 2^E`` with E detached.

    ``scales`` is ``[N, n_groups]`` float (already clamped/rounded by the caller if it wants
    exactly the stored values). The gradient flows to ``scales`` (and, through the sign choice
    being piecewise constant, not to ``w``; wrap with an STE where training ``w``). Returns
    ``w.dtype`` ``[N, K]``; with fp16-rounded in-range scales it equals :func:`decode_pot`.
    """
    k = w.shape[1]
    g, _ = cfg.groups_in(k)
    s = scales.repeat_interleave(g, dim=1)[:, :k]
    e = exponent_codes(w.detach(), s.detach(), cfg.qmax)
    sign = torch.where(w.detach() < 0, -1.0, 1.0).to(s.dtype)
    return (sign * s * torch.exp2(e.to(s.dtype))).to(w.dtype)


__all__ = [
    "PoTWeight", "quantize_pot", "decode_pot", "pot_fake_quant", "rtn_scales", "clamp_scales",
    "scale_range", "exponent_codes", "group_mask", "grouped",
]

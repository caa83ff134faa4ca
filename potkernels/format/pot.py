"""The power-of-two (PoT) code: quantize, pack, and the reference decode.

w ≈ (-1)^p · S · 2^E with p a sign bit, E ∈ [0, qmax] an unsigned exponent code and S the
group's *level scale* (its smallest magnitude level). Format v3 stores the group's **top level**
``S_top = S·2^qmax`` as fp16 (any fp16 in [0, 65504]: subnormal and zero are legal) and decodes
``w = S_top · v`` with the *scale-free* value ``v = ±2^(E − qmax)`` built by OR-ing a constant into
an fp16 exponent field (no add). The fp32 product is exact; the result is rounded once to the
output dtype (FORMAT.md §5). Calibration works with S; :func:`top_scales` is the one conversion.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import PackedWeight, check_decode_dtype, check_weight, expand_groups, group_mask, grouped
from .config import PoTConfig
from .layout import pot_value_or
from .packing import pack_codes, packed_rows, unpack_codes

FP16_MAX = 65504.0
# fp16 / bf16 mantissa widths: where the exponent field starts in the 16-bit pattern.
MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7}


def scale_range(bits: int) -> tuple[float, float]:
    """Smallest and largest *level* scale S (float) that the format stores: ``[0, 65504 / 2^qmax]``.

    The stored value is the top level ``S_top = S·2^qmax`` (:func:`top_scales`), any fp16 number in
    ``[0, 65504]`` — subnormal and zero included (FORMAT.md §1, §5).
    """
    return 0.0, FP16_MAX / 2.0 ** (2 ** (bits - 1) - 1)


def top_scales(scales: torch.Tensor, bits: int) -> torch.Tensor:
    """The format boundary, the one place a level scale becomes a stored one.

    ``scales``: level scales S (the smallest magnitude level, what :func:`rtn_scales` and the
    calibrators work with), float, any shape. Returns the stored fp16 top level
    ``S_top = fp16(clamp(S · 2^qmax, 0, 65504))`` (round to nearest even; negative S and −0 give +0,
    NaN/Inf are rejected). ``S·2^qmax`` is exact in fp32, so this rounds once.
    """
    if not bool(torch.isfinite(scales).all()):
        raise ValueError("PoT scales must be finite")
    qmax = 2 ** (bits - 1) - 1
    top = (scales.float() * 2.0**qmax).clamp(0.0, FP16_MAX) + 0.0  # + 0.0 turns −0 into +0
    return top.to(torch.float16)


def level_scales(stored: torch.Tensor, bits: int) -> torch.Tensor:
    """Stored fp16 top levels ``S_top`` → float32 level scales ``S = S_top · 2^−qmax`` (exact in fp32)."""
    return stored.float() * 2.0 ** -(2 ** (bits - 1) - 1)


def clamp_scales(scales: torch.Tensor, bits: int) -> torch.Tensor:
    """The storable level scale nearest each ``S``: float32 ``level_scales(top_scales(S))``, same shape.

    Idempotent; what calibration compares and optimises against when it wants the stored values.
    """
    return level_scales(top_scales(scales, bits), bits)


def rtn_scales(w: torch.Tensor, cfg: PoTConfig) -> torch.Tensor:
    """Round-to-nearest level scale: the group's largest magnitude lands on the top level S·2^qmax.

    Returns float32 ``[N, n_groups]`` (``max|w_group| / 2^qmax``; :func:`top_scales` stores it as
    ``fp16(max|w_group|)``; an all-zero group gets 0).
    """
    g, _ = cfg.groups_in(w.shape[1])
    return grouped(w.float().abs(), g).amax(dim=-1) / 2.0**cfg.qmax


def exponent_codes(w: torch.Tensor, scales: torch.Tensor, qmax: int) -> torch.Tensor:
    """E = clamp(round(log2(|w| / S)), 0, qmax), rounding in the log domain, computed exactly.

    Args: ``w [N, K]`` float (used as float32), ``scales [N, K]`` level scales S ≥ 0 (already
    expanded per weight; storable ones, see :func:`clamp_scales`, have ≤ 11 significant bits).
    Returns int32 ``[N, K]``. ``w == 0`` or ``S == 0`` gives E = 0.

    Exactness: ``q = w² / S²`` in fp64 (w² and S² exact: ≤ 48 significant bits each). The
    boundary ``|w|/S = 2^(e+½)`` is ``q = 2^(2e+1)``; no rational q equals it, and q is at least a
    relative 2^−48 away, so fp64's one rounding of the quotient cannot cross it. With
    ``q = m·2^x`` (``frexp``, m ∈ [½, 1)), ``round(log2(q) / 2) = floor(x / 2)``.
    """
    q = w.float().double().square() / scales.float().double().square()
    _, x = torch.frexp(torch.where(scales > 0, q, 0.0))
    return torch.div(x, 2, rounding_mode="floor").clamp(0, qmax).to(torch.int32)


def pot_encode(w: torch.Tensor, scales: torch.Tensor, group_size: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes :func:`quantize_pot` stores: ``(E, sign)`` int32 ``[N, K]`` each.

    ``w [N, K]`` float; ``scales [N, n_groups]`` storable level scales (:func:`clamp_scales`).
    E from :func:`exponent_codes`, sign = ``w < 0``; a group whose scale is 0 gets code 0 (E = 0,
    sign 0: it decodes to +0, whatever its weights).
    """
    s = scales.float().repeat_interleave(group_size, dim=1)[:, :w.shape[1]]
    live = s > 0
    e = torch.where(live, exponent_codes(w, s, qmax), 0)
    return e, (live & (w < 0)).to(torch.int32)


@dataclass
class PoTWeight(PackedWeight):
    """A packed PoT weight of logical shape ``[out_features, in_features]``.

    Tensors (N = out_features, K = in_features):
        qweight: int32 ``[packed_rows(K, bits), N]`` codes ``E | sign << (bits − 1)`` in the v2
                 layout (``layout.py``; all bits of a code in one word, the sign its own bit)
        scales:  fp16  ``[n_groups, N]`` the per-group top level ``S_top = S·2^qmax`` (finite, ≥ +0;
                 subnormal and zero allowed), see :func:`top_scales`
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    in_features: int
    config: PoTConfig

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"qweight": self.qweight, "scales": self.scales}

    @staticmethod
    def expected_for(config: PoTConfig, in_features: int, out_features: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Buffer name → (dtype, shape) of a layer: the single source of truth for names and shapes."""
        k, n = in_features, out_features
        return {"qweight": (torch.int32, (packed_rows(k, config.bits), n)),
                "scales": (torch.float16, (config.groups_in(k)[1], n))}

    def expected(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return self.expected_for(self.config, self.in_features, self.out_features)

    def validate(self) -> None:
        """Raise ValueError if the tensors do not fit the declared shape and config."""
        self.check_tensors()
        s = self.scales
        if not bool(torch.isfinite(s).all()) or bool((s.view(torch.int16) < 0).any()):
            raise ValueError("PoTWeight.scales (top levels S_top) must be finite and ≥ +0 "
                             "(a negative, −0, NaN or Inf scale is not a v3 value)")

    def codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpacked (E, sign) as int32 ``[N, K]`` each."""
        b = self.config.bits
        c = unpack_codes(self.qweight, "pot", b, self.in_features)
        return c & ((1 << (b - 1)) - 1), c >> (b - 1)

    def dequantize(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """Reference decode → ``[out_features, in_features]`` in fp16 or bf16 (bit-exact)."""
        e, p = self.codes()
        return decode_pot(e, p, self.scales, self.group_size, dtype, bits=self.config.bits)


def pot_unit_values(e: torch.Tensor, sign: torch.Tensor, bits: int) -> torch.Tensor:
    """The scale-free fp16 value ±2^(E − qmax) built by OR only: ``sign << 15 | (15 − qmax + E) << 10``
    (the constant exponent bits and E do not overlap). int ``[N, K]`` → fp16 ``[N, K]``."""
    bits16 = (sign.to(torch.int32) << 15) | pot_value_or(bits) | (e.to(torch.int32) << 10)
    bits16 = torch.where(bits16 >= 2**15, bits16 - 2**16, bits16)  # uint16 pattern → int16
    return bits16.to(torch.int16).view(torch.float16)


def decode_pot(e: torch.Tensor, sign: torch.Tensor, scales: torch.Tensor, group_size: int,
               dtype: torch.dtype = torch.float16, *, bits: int) -> torch.Tensor:
    """Reference decode ``S_top · v``, ``v = ±2^(E − qmax)`` (format v3).

    Args:
        e, sign: int ``[N, K]`` exponent codes and sign bits.
        scales: fp16 ``[n_groups, N]`` stored top levels S_top (finite, ≥ 0).
        dtype: torch.float16 or torch.bfloat16.
        bits: the code width (qmax of ``v``).
    Returns ``[N, K]`` of ``dtype``: the fp32 product (exact: ≤ 11 significant bits times a power of
    two) rounded once, RNE. fp16 output rounds only where ``S_top·2^(E−qmax) < 2^−14`` has bits
    below 2^−24; an all-zero group (S_top = 0) gives exact +0.
    """
    check_decode_dtype(dtype)
    v = pot_unit_values(e, sign, bits).float()
    s = expand_groups(scales.float(), group_size, e.shape[1])
    return (s * v).to(dtype)


def quantize_pot(w: torch.Tensor, cfg: PoTConfig, scales: torch.Tensor | None = None) -> PoTWeight:
    """Quantize a float weight ``[N, K]`` to packed PoT codes.

    Args:
        w: ``[out_features, in_features]`` floating, finite.
        cfg: bits and group size.
        scales: optional ``[N, n_groups]`` per-group *level* scales S (e.g. from calibration);
            default :func:`rtn_scales`. Stored as ``S_top = top_scales(S)``; E is then rounded
            against the stored value, so decoding reproduces exactly what was chosen. A group
            whose S_top is 0 gets all codes 0 (it decodes to exact zeros).
    """
    check_weight(w)
    n, k = w.shape
    g, n_groups = cfg.groups_in(k)
    if scales is None:
        scales = rtn_scales(w, cfg)
    if tuple(scales.shape) != (n, n_groups):
        raise ValueError(f"scales must be [out_features, n_groups] = {(n, n_groups)}, got {tuple(scales.shape)}")
    top = top_scales(scales.to(w.device), cfg.bits)  # [N, n_groups] fp16
    e, sign = pot_encode(w, level_scales(top, cfg.bits), g, cfg.qmax)
    return PoTWeight(
        qweight=pack_codes(e | (sign << cfg.exp_bits), "pot", cfg.bits),
        scales=top.t().contiguous(),
        in_features=k,
        config=cfg,
    )


def pot_fake_quant(w: torch.Tensor, scales: torch.Tensor, cfg: PoTConfig) -> torch.Tensor:
    """Differentiable PoT round trip in float: ``sign(w) · S · 2^E`` with E detached.

    ``scales`` is ``[N, n_groups]`` float level scales S (passed through :func:`clamp_scales` by
    the caller if it wants exactly the stored values). The gradient flows to ``scales`` (and,
    through the sign choice being piecewise constant, not to ``w``; wrap with an STE where training
    ``w``). Returns ``w.dtype`` ``[N, K]``; with storable scales it is :func:`decode_pot`'s exact
    fp32 product before its one rounding (equal to it for fp16 ``w``).
    """
    k = w.shape[1]
    g, _ = cfg.groups_in(k)
    e, sign = pot_encode(w.detach(), scales.detach(), g, cfg.qmax)
    s = scales.repeat_interleave(g, dim=1)[:, :k]
    return ((1 - 2 * sign).to(s.dtype) * s * torch.exp2(e.to(s.dtype))).to(w.dtype)


__all__ = [
    "PoTWeight", "quantize_pot", "decode_pot", "pot_unit_values", "pot_fake_quant", "rtn_scales", "clamp_scales",
    "top_scales", "level_scales", "scale_range", "exponent_codes", "pot_encode", "group_mask", "grouped",
]

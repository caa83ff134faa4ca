"""The power-of-two (PoT) code: quantize, pack, and the reference decode.

w ≈ (-1)^p · S · 2^E with p a sign bit, E ∈ [0, qmax] an unsigned exponent code and S one fp16
scale per group (the smallest magnitude level). Format v2 decodes the *scale-free* value
``v = ±2^(E − qmax)`` by OR-ing a constant into an fp16 exponent field (no add), and the weight
is ``(S·2^qmax) · v`` — a product of a normal fp16 number and a power of two, exact in fp32 and,
inside :func:`scale_range`, exactly representable in fp16 (bf16: rounded once). Same values as
v1's integer add of ``E << 10`` into S's bits (see FORMAT.md §5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import PackedWeight, check_decode_dtype, check_weight, expand_groups, group_mask, grouped
from .config import PoTConfig
from .layout import pot_value_or
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
        qweight: int32 ``[packed_rows(K, bits), N]`` codes ``E | sign << (bits − 1)`` in the v2
                 layout (``layout.py``; all bits of a code in one word, the sign its own bit)
        scales:  fp16  ``[n_groups, N]`` the per-group S, inside :func:`scale_range`
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
        b = self.config.bits
        lo, hi = scale_range(b)
        s = self.scales.float()
        if not bool(((s >= lo) & (s <= hi)).all()):
            raise ValueError(f"PoTWeight.scales outside the decodable range [{lo}, {hi}] for bits={b}")

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
               dtype: torch.dtype = torch.float16, *, bits: int = 4) -> torch.Tensor:
    """Reference decode ``(-1)^sign · S · 2^E`` the v2 way: ``(S · 2^qmax) · v``.

    Args:
        e, sign: int ``[N, K]`` exponent codes and sign bits.
        scales: fp16 ``[n_groups, N]`` (normal, inside scale_range).
        dtype: torch.float16 (exact: no rounding at all) or torch.bfloat16 (one RNE rounding).
        bits: selects qmax of the scale-free split; the result is the same for any valid bits.
    Returns ``[N, K]`` of ``dtype``; bit-identical with v1's integer-add decode
    (``legacy.decode_pot_v1``): S·2^E is exact in fp32 and scaling commutes with rounding.
    """
    check_decode_dtype(dtype)
    qmax = 2 ** (bits - 1) - 1
    v = pot_unit_values(e, sign, bits).float()
    s = expand_groups(scales.float() * 2.0**qmax, group_size, e.shape[1])  # exact in fp32
    return (s * v).to(dtype)  # fp32 product exact; fp16: representable, bf16: one RNE rounding


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
        qweight=pack_codes(e | (sign << cfg.exp_bits), "pot", cfg.bits),
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
    "PoTWeight", "quantize_pot", "decode_pot", "pot_unit_values", "pot_fake_quant", "rtn_scales", "clamp_scales",
    "scale_range", "exponent_codes", "group_mask", "grouped",
]

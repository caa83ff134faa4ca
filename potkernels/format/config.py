"""Quantization configs: which code (PoT or uniform int), how many bits, which groups.

A *group* is ``group_size`` consecutive input columns of one output row; it shares one fp16
scale (and, for int, one zero point). ``group_size=None`` means one group per output row
(per-channel). The last group of a row may be partial when ``in_features`` is not a multiple
of ``group_size``: it is stored as if padded with zeros, and its scale is computed from the
real columns only (see FORMAT.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

GROUP_SIZES = (32, 64, 128, 256)
POT_BITS = (2, 3, 4)
INT_BITS = (2, 3, 4, 8)


def _is_int(v: Any) -> bool:
    """A real int (4.0 or True compare equal to ints but would break the packing arithmetic)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _check_group_size(group_size: int | None) -> None:
    if group_size is not None and (not _is_int(group_size) or group_size not in GROUP_SIZES):
        raise ValueError(
            f"group_size must be one of {GROUP_SIZES} or None (per output channel), got {group_size!r}"
        )


@dataclass(frozen=True)
class PoTConfig:
    """Power-of-two code: w = (-1)^p * S * 2^E, p one sign bit, E an unsigned (bits-1)-bit code.

    Levels for bits=2: {±S, ±2S}; bits=3: {±S … ±8S}; bits=4: {±S … ±128S}. Zero is not a level.
    """

    bits: int = 4
    group_size: int | None = 128
    kind: Literal["pot"] = "pot"

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or self.bits not in POT_BITS:
            raise ValueError(f"PoT bits must be one of {POT_BITS} (1 sign bit + exponent bits), got {self.bits!r}")
        _check_group_size(self.group_size)

    @property
    def exp_bits(self) -> int:
        """Width of the exponent code E (the sign bit is stored apart)."""
        return self.bits - 1

    @property
    def qmax(self) -> int:
        """Largest exponent code: E ∈ [0, qmax]."""
        return 2 ** (self.bits - 1) - 1

    def groups_in(self, in_features: int) -> tuple[int, int]:
        """(group size actually used, number of groups) for a row of ``in_features`` columns."""
        return _groups_in(self.group_size, in_features)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IntConfig:
    """Uniform asymmetric int code (the baseline twin): w = (q - z) * s, q and z unsigned ``bits``-bit."""

    bits: int = 4
    group_size: int | None = 128
    kind: Literal["int"] = "int"

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or self.bits not in INT_BITS:
            raise ValueError(f"int bits must be one of {INT_BITS}, got {self.bits!r}")
        _check_group_size(self.group_size)

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def groups_in(self, in_features: int) -> tuple[int, int]:
        return _groups_in(self.group_size, in_features)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QuantConfig = PoTConfig | IntConfig


def _groups_in(group_size: int | None, in_features: int) -> tuple[int, int]:
    if in_features <= 0:
        raise ValueError(f"in_features must be positive, got {in_features}")
    g = in_features if group_size is None else group_size
    return g, -(-in_features // g)


def config_from_dict(d: dict[str, Any]) -> QuantConfig:
    """Inverse of ``cfg.to_dict()`` (used by checkpoints)."""
    kind = d.get("kind")
    fields = {k: d[k] for k in ("bits", "group_size") if k in d}
    if kind == "pot":
        return PoTConfig(**fields)
    if kind == "int":
        return IntConfig(**fields)
    raise ValueError(f"unknown quantization kind {kind!r} (expected 'pot' or 'int')")

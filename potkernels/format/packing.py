"""Format v2 packing: codes ``[N, K]`` ↔ int32 words ``[rows, N]`` by the layouts of ``layout.py``.

K is padded with zero codes to ``Kp = ceil(K / 32)·32`` (a whole 3-bit unit of 32 codes, and a
whole number of words for every width), so ``rows = Kp · bits / 32``: exactly ``bits`` bits per
(padded) weight. Words are int32 holding the uint32 bit pattern.
"""
from __future__ import annotations

import torch

from .layout import WORD_BITS, layout


def padded_k(in_features: int) -> int:
    """K rounded up to a multiple of 32 (the 3-bit unit; whole words for every width)."""
    return -(-in_features // WORD_BITS) * WORD_BITS


def packed_rows(in_features: int, bits: int) -> int:
    """Number of int32 rows holding ``in_features`` codes of ``bits`` bits per column."""
    return padded_k(in_features) * bits // WORD_BITS


def _check_kind_bits(kind: str, bits: int) -> None:
    layout(kind, bits)  # raises ValueError for unknown combinations


def pack_codes(codes: torch.Tensor, kind: str, bits: int) -> torch.Tensor:
    """Pack unsigned codes into v2 words.

    Args:
        codes: integer tensor ``[N, K]`` (weight orientation), values in ``[0, 2**bits)``;
            PoT codes are ``E | sign << (bits − 1)``.
        kind: "pot" or "int" (the layouts differ).
    Returns:
        int32 ``[packed_rows(K, bits), N]``.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D [N, K], got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    _check_kind_bits(kind, bits)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits}) for bits={bits}")
    lay = layout(kind, bits)
    n, k = codes.shape
    kp = padded_k(k)
    c = torch.nn.functional.pad(codes.to(torch.int32), (0, kp - k)).t().contiguous()  # [Kp, N]
    c = c.view(kp // lay.unit_codes, lay.unit_codes, n)
    words = torch.zeros(kp // lay.unit_codes, lay.unit_words, n, dtype=torch.int32, device=codes.device)
    for i, code_pos in enumerate(lay.positions):
        for j, (w, b) in enumerate(code_pos):
            words[:, w] |= ((c[:, i] >> j) & 1) << b  # int32 shifts into bit 31 wrap to the uint32 pattern
    return words.view(-1, n)


def unpack_codes(packed: torch.Tensor, kind: str, bits: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 ``[rows, N]`` → int32 codes ``[N, in_features]``."""
    _check_kind_bits(kind, bits)
    expected = packed_rows(in_features, bits)
    if packed.dim() != 2 or packed.dtype != torch.int32 or packed.shape[0] != expected:
        raise ValueError(f"packed codes must be int32 [{expected}, N] for K={in_features}, bits={bits}; "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    lay = layout(kind, bits)
    n = packed.shape[1]
    kp = padded_k(in_features)
    words = packed.view(kp // lay.unit_codes, lay.unit_words, n)
    c = torch.zeros(kp // lay.unit_codes, lay.unit_codes, n, dtype=torch.int32, device=packed.device)
    for i, code_pos in enumerate(lay.positions):
        for j, (w, b) in enumerate(code_pos):
            c[:, i] |= ((words[:, w] >> b) & 1) << j  # arithmetic shift: high bits masked away
    return c.view(kp, n)[:in_features].t().contiguous()

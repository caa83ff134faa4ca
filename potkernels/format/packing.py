"""Format v2 packing: codes ``[N, K]`` ↔ int32 words ``[rows, N]`` by the layouts of ``layout.py``.

K is padded with zero codes to ``Kp = ceil(K / 32)·32`` (a whole 3-bit unit of 32 codes, and a
whole number of words for every width), so ``rows = Kp · bits / 32``: exactly ``bits`` bits per
(padded) weight. Words are int32 holding the uint32 bit pattern.
"""
from __future__ import annotations

import functools
from typing import Sequence

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


# Both directions move every bit with a few whole-tensor ops (gather, shift, mask, shift, sum over
# a word's 32 bits) instead of one op per (code, bit): on a busy CPU each op is an OpenMP region whose
# threads spin-wait for a core, so ~100 small ops per call were 10–20× slower at 2 threads under load.
# Work goes in chunks of units so the bit-expanded intermediate stays ≤ _CHUNK_ELEMS int32.
_CHUNK_ELEMS = 1 << 23


@functools.lru_cache(maxsize=None)
def _bit_tables(kind: str, bits: int) -> tuple[tuple[int, ...], ...]:
    """Per layout: for every (word, bit) in word-major order its source (code, code bit), and for
    every (code, code bit) in code-major order its (word, bit)."""
    lay = layout(kind, bits)
    src = sorted((w * WORD_BITS + b, i, j) for i, code in enumerate(lay.positions) for j, (w, b) in enumerate(code))
    dst = [(w, b, j) for code in lay.positions for j, (w, b) in enumerate(code)]
    return (tuple(i for _, i, _ in src), tuple(j for _, _, j in src), tuple(p % WORD_BITS for p, _, _ in src),
            tuple(w for w, _, _ in dst), tuple(b for _, b, _ in dst), tuple(j for _, _, j in dst))


def _spread(src: torch.Tensor, index: Sequence[int], right: Sequence[int], left: Sequence[int],
            groups: int, per_group: int) -> torch.Tensor:
    """``out[u, g, n] = Σ_t ((src[u, index[t], n] >> right[t]) & 1) << left[t]`` over the ``per_group``
    entries ``t`` of group ``g`` (disjoint bits, so the sum is their OR; int32 wraps to the uint32 pattern)."""
    dev = src.device
    idx = torch.tensor(index, device=dev)
    rs = torch.tensor(right, dtype=torch.int32, device=dev).view(1, -1, 1)
    ls = torch.tensor(left, dtype=torch.int32, device=dev).view(1, -1, 1)
    units, _, n = src.shape
    out = torch.empty(units, groups, n, dtype=torch.int32, device=dev)
    step = max(1, _CHUNK_ELEMS // max(1, len(index) * n))
    for u0 in range(0, units, step):
        t = src[u0:u0 + step].index_select(1, idx)
        t.bitwise_right_shift_(rs).bitwise_and_(1).bitwise_left_shift_(ls)
        torch.sum(t.view(t.shape[0], groups, per_group, n), dim=2, dtype=torch.int32, out=out[u0:u0 + step])
    return out


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
    src_code, src_bit, dst_bit = _bit_tables(kind, bits)[:3]
    words = _spread(c.view(kp // lay.unit_codes, lay.unit_codes, n), src_code, src_bit, dst_bit,
                    lay.unit_words, WORD_BITS)
    return words.view(packed_rows(k, bits), n)


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
    word, bit, code_bit = _bit_tables(kind, bits)[3:]
    c = _spread(packed.view(kp // lay.unit_codes, lay.unit_words, n), word, bit, code_bit, lay.unit_codes, bits)
    return c.view(kp, n)[:in_features].t().contiguous()

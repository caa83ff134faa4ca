"""Bit-plane packing of small unsigned codes into int32 words, laid out for the kernels.

A code of ``code_bits`` bits is split into *planes* whose widths are powers of two, widest
first (3 → 2+1, 4 → 4, 8 → 8, 1 → 1). Each plane packs ``32 // width`` codes of one output
column into an int32 word, **contiguously along K** (input features):

    plane word [r, n] holds codes k = r*epw + j, j = 0 … epw-1, at bit offset j*width

and the words are stored ``[rows, N]`` row-major, so a kernel tile reading BLOCK_K × BLOCK_N
codes reads BLOCK_N contiguous words per row (coalesced) and finds code k in row
``k // epw`` at shift ``(k % epw) * width``. The planes of one tensor are stacked along the
row axis (plane 0 first). K is padded with zero codes to a multiple of 32 so that every
plane has whole words; that padding is the only storage beyond ``code_bits`` per weight.

Plane ``i`` holds bits ``[off_i, off_i + width_i)`` of the code, low bits in plane 0.
"""
from __future__ import annotations

import torch

WORD_BITS = 32


def plane_widths(code_bits: int) -> tuple[int, ...]:
    """Powers of two summing to ``code_bits``, widest first: 3 → (2, 1), 4 → (4,), 8 → (8,)."""
    if not 1 <= code_bits <= 8:
        raise ValueError(f"code_bits must be in 1..8, got {code_bits}")
    return tuple(w for w in (8, 4, 2, 1) if code_bits & w)


def padded_k(in_features: int) -> int:
    """K rounded up to a whole word of 1-bit codes (32)."""
    return -(-in_features // WORD_BITS) * WORD_BITS


def plane_row_offsets(in_features: int, code_bits: int) -> list[tuple[int, int, int]]:
    """(first row, width, bit offset in the code) of each plane in the stacked tensor."""
    kp = padded_k(in_features)
    out, row, bit = [], 0, 0
    for w in plane_widths(code_bits):
        out.append((row, w, bit))
        row += kp * w // WORD_BITS
        bit += w
    return out


def packed_rows(in_features: int, code_bits: int) -> int:
    """Number of int32 rows holding ``in_features`` codes of ``code_bits`` bits per column."""
    return padded_k(in_features) * code_bits // WORD_BITS


def pack_codes(codes: torch.Tensor, code_bits: int) -> torch.Tensor:
    """Pack unsigned codes into stacked bit planes.

    Args:
        codes: integer tensor ``[N, K]`` (weight orientation), values in ``[0, 2**code_bits)``.
        code_bits: bits per code.
    Returns:
        int32 tensor ``[packed_rows(K, code_bits), N]``.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D [N, K], got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    n, k = codes.shape
    offsets = plane_row_offsets(k, code_bits)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**code_bits):
        raise ValueError(f"codes must lie in [0, {2**code_bits}) for code_bits={code_bits}")
    kp = padded_k(k)
    c = torch.nn.functional.pad(codes.to(torch.int32), (0, kp - k)).t().contiguous()  # [Kp, N]
    planes = []
    for _, width, bit in offsets:
        epw = WORD_BITS // width
        part = ((c >> bit) & ((1 << width) - 1)).view(kp // epw, epw, n)
        # OR the epw fields into one word; int32 shifts into bit 31 wrap to the uint32 pattern.
        word = part[:, 0]
        for j in range(1, epw):
            word = word | (part[:, j] << (j * width))
        planes.append(word)
    return torch.cat(planes, dim=0)


def unpack_codes(packed: torch.Tensor, code_bits: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 ``[rows, N]`` → int32 codes ``[N, in_features]``."""
    expected = packed_rows(in_features, code_bits)
    if packed.dim() != 2 or packed.dtype != torch.int32 or packed.shape[0] != expected:
        raise ValueError(
            f"packed codes must be int32 [{expected}, N] for K={in_features}, bits={code_bits}; "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    n = packed.shape[1]
    kp = padded_k(in_features)
    code = None
    for row, width, bit in plane_row_offsets(in_features, code_bits):
        epw = WORD_BITS // width
        rows = packed[row : row + kp // epw]  # [Kp/epw, N]
        shifts = (torch.arange(epw, device=packed.device, dtype=torch.int32) * width).view(1, epw, 1)
        # int32 arithmetic shift: the sign-extended high bits are masked away.
        part = ((rows.unsqueeze(1) >> shifts) & ((1 << width) - 1)).view(kp, n)  # [Kp, N]
        code = part if code is None else code | (part << bit)
    return code[:in_features].t().contiguous()

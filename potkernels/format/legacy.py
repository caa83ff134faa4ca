"""Formats 1 and 2 (read-only): the v1 → v2 repack and the v2 → v3 scale upgrade of checkpoints.

Version 1 stored codes in bit planes (below); version 2 (``layout.py``) keeps every bit of a code
in one word. :func:`repack_v1_tensors` turns the packed tensors of one v1 layer into v2 tensors
with identical decoded values (tested bit for bit against a committed v1 fixture).
Versions 1 and 2 store the PoT level scale S (normal fp16, inside v2's ``scale_range``); version 3
stores the top level ``S_top = S·2^qmax``: :func:`upgrade_v2_scales` / :func:`upgrade_v2_state_dict`
(pure functions, tensors in, tensors out; tested bit for bit against a committed v2 fixture).

v1 layout: bit-plane packing of small unsigned codes into int32 words.

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

from .packing import WORD_BITS, pack_codes, packed_rows, padded_k


def plane_widths(code_bits: int) -> tuple[int, ...]:
    """Powers of two summing to ``code_bits``, widest first: 3 → (2, 1), 4 → (4,), 8 → (8,)."""
    if not 1 <= code_bits <= 8:
        raise ValueError(f"code_bits must be in 1..8, got {code_bits}")
    return tuple(w for w in (8, 4, 2, 1) if code_bits & w)


def plane_row_offsets(in_features: int, code_bits: int) -> list[tuple[int, int, int]]:
    """(first row, width, bit offset in the code) of each plane in the stacked tensor."""
    kp = padded_k(in_features)
    out, row, bit = [], 0, 0
    for w in plane_widths(code_bits):
        out.append((row, w, bit))
        row += kp * w // WORD_BITS
        bit += w
    return out


def pack_codes_v1(codes: torch.Tensor, code_bits: int) -> torch.Tensor:
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


def unpack_codes_v1(packed: torch.Tensor, code_bits: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes_v1`: int32 ``[rows, N]`` → int32 codes ``[N, in_features]``."""
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


def repack_v1_tensors(kind: str, bits: int, in_features: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One layer's v1 tensors → v2 tensors (same values once decoded).

    PoT v1: ``qexp`` (E in planes of ``bits − 1`` bits) + ``qsign`` (1-bit plane) + ``scales`` →
    v2 ``qweight`` (code ``E | sign << (bits − 1)``) + ``scales``. Int v1: ``qweight`` planes →
    v2 ``qweight``; ``scales``/``zeros`` unchanged. Raises ValueError on wrong shapes.
    """
    out = {k: v for k, v in tensors.items() if k not in ("qexp", "qsign", "qweight")}
    if kind == "pot":
        if "qexp" not in tensors or "qsign" not in tensors:
            raise ValueError("a v1 PoT layer needs qexp and qsign")
        e = unpack_codes_v1(tensors["qexp"], bits - 1, in_features)
        p = unpack_codes_v1(tensors["qsign"], 1, in_features)
        out["qweight"] = pack_codes(e | (p << (bits - 1)), kind, bits)
    elif kind == "int":
        if "qweight" not in tensors:
            raise ValueError("a v1 int layer needs qweight")
        out["qweight"] = pack_codes(unpack_codes_v1(tensors["qweight"], bits, in_features), kind, bits)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return out


def decode_pot_v1(e: torch.Tensor, sign: torch.Tensor, scales: torch.Tensor, group_size: int,
                  dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The v1 reference decode (integer add of E into the scale's exponent field), kept so tests
    can check that v2's OR-and-multiply decode gives the same bits."""
    from .common import expand_groups

    mant = {torch.float16: 10, torch.bfloat16: 7}[dtype]
    s_bits = scales.to(dtype).view(torch.int16).to(torch.int32)
    s_bits = expand_groups(s_bits, group_size, e.shape[1])
    bits = (s_bits + (e.to(torch.int32) << mant)) | (sign.to(torch.int32) << 15)
    bits = torch.where(bits >= 2**15, bits - 2**16, bits)
    return bits.to(torch.int16).view(dtype)


def repack_v1_state_dict(tensors: dict[str, torch.Tensor], layers: list[tuple[str, str, int, int]]) -> dict[str, torch.Tensor]:
    """A v1 checkpoint's state dict with every quantized layer repacked to v2 (a new dict).

    ``layers``: ``(module name, kind, bits, in_features)`` per quantized layer. Raises ValueError
    when a listed layer's v1 tensors are missing or mis-shaped.
    """
    out = dict(tensors)
    for name, kind, bits, in_features in layers:
        names = ("qexp", "qsign") if kind == "pot" else ("qweight",)
        layer = {}
        for t in names:
            key = f"{name}.{t}"
            if key not in out:
                raise ValueError(f"v1 checkpoint lacks {key}")
            layer[t] = out.pop(key)
        try:
            new = repack_v1_tensors(kind, bits, in_features, layer)
        except ValueError as e:
            raise ValueError(f"layer {name}: {e}") from e
        out[f"{name}.qweight"] = new["qweight"]
    return out


def upgrade_v2_scales(scales: torch.Tensor, bits: int) -> torch.Tensor:
    """v1/v2 PoT scales S (fp16 ``[n_groups, N]``) → v3 top levels ``S_top = S·2^qmax`` (fp16, same shape).

    Exact: v2 kept S normal with ``S·2^qmax ≤ 65504`` (its ``scale_range``), so the power-of-two
    multiply of a normal fp16 lands on an fp16 number, and ``S_top · v`` equals v2's ``(S·2^qmax)·v``
    bit for bit. Raises ValueError for scales outside v2's range (not a v1/v2 checkpoint's).
    """
    qmax = 2 ** (bits - 1) - 1
    if scales.dtype != torch.float16:
        raise ValueError(f"v2 PoT scales are fp16, got {scales.dtype}")
    s = scales.float()
    top = s * 2.0**qmax
    if not bool(((s >= 2.0**-14) & (top <= 65504.0)).all()):
        raise ValueError(f"PoT scales outside the v1/v2 range [2^-14, 65504 / 2^{qmax}]")
    return top.to(torch.float16)


def upgrade_v2_state_dict(tensors: dict[str, torch.Tensor],
                          layers: list[tuple[str, str, int]]) -> dict[str, torch.Tensor]:
    """A v2 (or repacked v1) checkpoint's state dict with every PoT layer's scales upgraded to v3 (a new dict).

    ``layers``: ``(module name, kind, bits)`` per quantized layer; int layers are unchanged (their
    format did not change). Raises ValueError when a listed PoT layer's scales are missing or out of range.
    """
    out = dict(tensors)
    for name, kind, bits in layers:
        if kind != "pot":
            continue
        key = f"{name}.scales"
        if key not in out:
            raise ValueError(f"v2 checkpoint lacks {key}")
        try:
            out[key] = upgrade_v2_scales(out[key], bits)
        except ValueError as e:
            raise ValueError(f"layer {name}: {e}") from e
    return out


def upgrade_state_dict(tensors: dict[str, torch.Tensor], version: int,
                       layers: list[tuple[str, str, int, int]]) -> dict[str, torch.Tensor]:
    """A version-``version`` checkpoint's state dict → the current format (v3), decoded weights
    bit-identical: v1 is repacked to v2 (:func:`repack_v1_state_dict`), then v2 PoT scales become
    v3 top levels (:func:`upgrade_v2_state_dict`). v3 is returned as is (a new dict).

    ``layers``: ``(module name, kind, bits, in_features)`` per quantized layer. Raises ValueError for
    an unknown version or missing / mis-shaped / out-of-range tensors.
    """
    if version not in (1, 2, 3):
        raise ValueError(f"no upgrade from format version {version!r} (known: 1, 2, 3)")
    out = dict(tensors)
    if version == 1:
        out = repack_v1_state_dict(out, layers)
    if version <= 2:
        out = upgrade_v2_state_dict(out, [(name, kind, bits) for name, kind, bits, _ in layers])
    return out

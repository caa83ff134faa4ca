"""The packed tensors of one weight as the kernels see them, checked once (no Triton here)."""
from __future__ import annotations

import functools
import weakref
from typing import Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ..format.layout import layout
from ..format.packing import packed_rows, padded_k

_LUTS: dict[tuple[str, int, torch.device], torch.Tensor] = {}
# int zero-point tensor -> (weakref to its scales, both version counters, scale_zero_words): by identity, dropped
# with the tensor, and nothing attached to the caller's tensors (an attribute would be pickled by torch.save)
_SCALE_ZERO: WeakIdKeyDictionary = WeakIdKeyDictionary()


def layout_lut(kind: str, bits: int, device: torch.device) -> torch.Tensor:
    """int32 ``Layout.lut()`` on ``device`` (cached): what the tile decoder gathers bits with."""
    key = (kind, bits, device)
    if key not in _LUTS:
        _LUTS[key] = torch.tensor(layout(kind, bits).lut(), dtype=torch.int32, device=device)
    return _LUTS[key]


def scale_zero_words(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """An int weight's group values as the tensor-core kernels read them: int32 ``[n_groups, N]``, the fp16
    scale's bits in bits 0–15 and the uint8 zero point in bits 16–23 (``mma_tile.word_scale`` / ``word_zero``).

    One aligned 4-byte word per group and row: a copy cp.async pipelines with the packed words (a thread's one
    or two bytes of a uint8 tensor cannot ride it, and a byte of a word of four needs a per-row shift, which makes
    triton send the decoded tile through shared memory), taken apart by compile-time shifts."""
    return (scales.view(torch.int16).to(torch.int32) & 0xFFFF) | (zeros.to(torch.int32) << 16)


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor tracks no versions (and cannot change outside inference mode)
        return -1


class Packed:
    """v2-layout ``qweight`` words, fp16 scales (PoT: the v3 top levels S_top; int: s) and (int)
    uint8 zero points of one ``[N, K]`` weight. The checks depend only on the tensors' dtypes, shapes and
    devices and the code parameters, so they run once per distinct layer geometry (:func:`_check`, cached):
    a model's forward passes re-check nothing. Int weights also give the tensor-core kernels'
    :func:`scale_zero_words` (:attr:`tile_scales`), repacked once per weight."""

    def __init__(self, kind: str, q: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                 bits: int, group_size: int, in_features: int):
        self.kind, self.bits, self.G, self.K = kind, int(bits), int(group_size), int(in_features)
        self.N, self.KP, self.unit_words, self.unit_codes = _check(kind, self.bits, self.G, self.K, _meta(q),
                                                                   _meta(scales), _meta(zeros))
        self.q, self.scales = q.contiguous(), scales.contiguous()
        # Unused pointer slots get a real tensor of the right device (never dereferenced).
        self.zeros = zeros.contiguous() if zeros is not None else self.scales
        self._sources = (scales, zeros)
        self.device = q.device
        self.lut = layout_lut(kind, self.bits, self.device)

    @property
    def is_pot(self) -> bool:
        return self.kind == "pot"

    @property
    def tile_scales(self) -> torch.Tensor:
        """The group values the tensor-core kernels (``small_batch``, ``gemm``) read: PoT the fp16 scales, int
        :func:`scale_zero_words`. The int words are built on first use and kept for as long as the zero-point
        tensor the caller passed lives (so a model's forward passes launch nothing extra; 4 bytes per group and row),
        and rebuilt when either source tensor is replaced or changed in place."""
        if self.is_pot:
            return self.scales
        scales, zeros = self._sources
        versions = (_version(scales), _version(zeros))
        cached = _SCALE_ZERO.get(zeros)
        if cached is None or cached[0]() is not scales or cached[1] != versions:
            cached = (weakref.ref(scales), versions, scale_zero_words(self.scales, self.zeros))
            _SCALE_ZERO[zeros] = cached
        return cached[2]

    def code_constexprs(self) -> dict[str, int]:
        """The constexprs that select this code in every kernel."""
        return {"IS_POT": self.is_pot, "BITS": self.bits, "UNIT_WORDS": self.unit_words,
                "UNIT_CODES": self.unit_codes}

    def group_runs(self) -> int:
        """Runs of 32 k per scale group, a kernel compile-time constant; 0 when one group spans the row
        (per-channel), so the kernels need no per-K specialization there."""
        return 0 if self.G >= self.K else self.G // 32


_Meta = Optional[tuple[torch.dtype, tuple[int, ...], torch.device]]


def _meta(t: Optional[torch.Tensor]) -> _Meta:
    return None if t is None else (t.dtype, tuple(t.shape), t.device)


@functools.lru_cache(maxsize=4096)
def _check(kind: str, bits: int, group_size: int, in_features: int, q: _Meta, scales: _Meta,
           zeros: _Meta) -> tuple[int, int, int, int]:
    """Every check of one packed weight's geometry, raising a clear error (errors are not cached, so bad
    input fails on every call); returns (N, KP, unit_words, unit_codes)."""
    if kind not in ("pot", "int"):
        raise ValueError(f"kind must be 'pot' or 'int', got {kind!r}")
    allowed = (2, 3, 4) if kind == "pot" else (2, 3, 4, 8)
    if bits not in allowed:
        raise ValueError(f"{kind} bits must be one of {allowed}, got {bits}")
    if in_features <= 0:
        raise ValueError(f"in_features must be positive, got {in_features}")
    if group_size <= 0 or (group_size != in_features and group_size % 32 != 0):
        raise ValueError(f"group_size must be a multiple of 32 or in_features ({in_features}), got {group_size}")
    if scales[0] != torch.float16:
        raise TypeError(f"scales must be fp16 [n_groups, N], got {scales[0]} {list(scales[1])}")
    if len(q[1]) != 2:
        raise ValueError(f"packed codes must be a 2-D int32 [rows, N] tensor, got shape {list(q[1])}")
    n = q[1][1]
    n_groups = -(-in_features // group_size)
    _expect("scales", scales, torch.float16, (n_groups, n))
    _expect("qweight", q, torch.int32, (packed_rows(in_features, bits), n))
    if kind == "int":
        _expect("zeros", zeros, torch.uint8, (n_groups, n))
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is not None and t[2] != q[2]:
            raise ValueError(f"{name} is on {t[2]} but the packed codes are on {q[2]}")
    lay = layout(kind, bits)
    return n, padded_k(in_features), lay.unit_words, lay.unit_codes


def _expect(name: str, t: _Meta, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if t is None:
        raise ValueError(f"{name} is required")
    if t[0] != dtype or t[1] != tuple(shape):
        raise ValueError(f"{name} must be {dtype} {list(shape)}, got {t[0]} {list(t[1])}")

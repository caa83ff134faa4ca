"""The packed tensors of one weight as the kernels see them, checked once (no Triton here)."""
from __future__ import annotations

from typing import Optional

import torch

from ..format.layout import layout
from ..format.packing import packed_rows, padded_k

_LUTS: dict[tuple[str, int, torch.device], torch.Tensor] = {}


def layout_lut(kind: str, bits: int, device: torch.device) -> torch.Tensor:
    """int32 ``Layout.lut()`` on ``device`` (cached): what the tile decoder gathers bits with."""
    key = (kind, bits, device)
    if key not in _LUTS:
        _LUTS[key] = torch.tensor(layout(kind, bits).lut(), dtype=torch.int32, device=device)
    return _LUTS[key]


class Packed:
    """v2-layout ``qweight`` words, fp16 scales (PoT: the v3 top levels S_top; int: s) and (int)
    uint8 zero points of one ``[N, K]`` weight."""

    def __init__(self, kind: str, q: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                 bits: int, group_size: int, in_features: int):
        if kind not in ("pot", "int"):
            raise ValueError(f"kind must be 'pot' or 'int', got {kind!r}")
        self.kind, self.bits, self.K = kind, int(bits), int(in_features)
        allowed = (2, 3, 4) if kind == "pot" else (2, 3, 4, 8)
        if self.bits not in allowed:
            raise ValueError(f"{kind} bits must be one of {allowed}, got {bits}")
        if self.K <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.G = int(group_size)
        if self.G <= 0 or (self.G != self.K and self.G % 32 != 0):
            raise ValueError(f"group_size must be a multiple of 32 or in_features ({self.K}), got {group_size}")
        if scales.dtype != torch.float16:
            raise TypeError(f"scales must be fp16 [n_groups, N], got {scales.dtype} {list(scales.shape)}")
        if q.dim() != 2:
            raise ValueError(f"packed codes must be a 2-D int32 [rows, N] tensor, got shape {list(q.shape)}")
        self.N = q.shape[1]
        n_groups = -(-self.K // self.G)
        _expect("scales", scales, torch.float16, (n_groups, self.N))
        _expect("qweight", q, torch.int32, (packed_rows(self.K, self.bits), self.N))
        if kind == "int":
            _expect("zeros", zeros, torch.uint8, (n_groups, self.N))
        lay = layout(kind, self.bits)
        self.unit_words, self.unit_codes = lay.unit_words, lay.unit_codes
        self.KP = padded_k(self.K)
        self.q, self.scales = q.contiguous(), scales.contiguous()
        # Unused pointer slots get a real tensor of the right device (never dereferenced).
        self.zeros = zeros.contiguous() if zeros is not None else self.scales
        self.device = q.device
        for name, t in (("scales", scales), ("zeros", zeros)):
            if t is not None and t.device != self.device:
                raise ValueError(f"{name} is on {t.device} but the packed codes are on {self.device}")
        self.lut = layout_lut(kind, self.bits, self.device)

    @property
    def is_pot(self) -> bool:
        return self.kind == "pot"

    def code_constexprs(self) -> dict[str, int]:
        """The constexprs that select this code in every kernel."""
        return {"IS_POT": self.is_pot, "BITS": self.bits, "UNIT_WORDS": self.unit_words,
                "UNIT_CODES": self.unit_codes}

    def group_runs(self) -> int:
        """Runs of 32 k per scale group, a kernel compile-time constant; 0 when one group spans the row
        (per-channel), so the kernels need no per-K specialization there."""
        return 0 if self.G >= self.K else self.G // 32


def _expect(name: str, t: Optional[torch.Tensor], dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if t is None:
        raise ValueError(f"{name} is required")
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be {dtype} {list(shape)}, got {t.dtype} {list(t.shape)}")

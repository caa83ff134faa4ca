"""Checks and group helpers shared by the PoT and uniform-int formats."""
from __future__ import annotations

import dataclasses
import warnings

import torch

# A group whose SQNR is below this keeps almost none of its signal (storing zeros gives 0 dB).
SQNR_WARN_DB = 1.0
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DECODE_DTYPES = (torch.float16, torch.bfloat16)


def check_weight(w: torch.Tensor) -> None:
    """A weight to quantize: 2-D ``[out_features, in_features]``, floating, finite."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(w.shape)}")
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight must be a floating tensor {FLOAT_DTYPES}, got {w.dtype}")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"weight has {bad} NaN/Inf entries; refusing to quantize it")


def check_decode_dtype(dtype: torch.dtype) -> None:
    if dtype not in DECODE_DTYPES:
        raise TypeError(f"decode dtype must be torch.float16 or torch.bfloat16, got {dtype}")


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N, K]`` → ``[N, n_groups, group_size]``, the partial last group padded with zeros."""
    n, k = w.shape
    n_groups = -(-k // group_size)
    w = torch.nn.functional.pad(w, (0, n_groups * group_size - k))
    return w.view(n, n_groups, group_size)


def group_mask(in_features: int, group_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool ``[n_groups, group_size]``: True where a padded group slot is a real column."""
    n_groups = -(-in_features // group_size)
    return (torch.arange(n_groups * group_size, device=device) < in_features).view(n_groups, group_size)


def expand_groups(per_group: torch.Tensor, group_size: int, in_features: int) -> torch.Tensor:
    """Stored ``[n_groups, N]`` per-group values → ``[N, in_features]`` per weight."""
    return per_group.t().repeat_interleave(group_size, dim=1)[:, :in_features]


def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(‖w‖² / ‖w − ŵ‖²) in dB (inf when exact)."""
    w = w.detach().double()
    noise = (w - w_hat.detach().double()).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(w.pow(2).sum() / noise))


def group_sqnr_db(w: torch.Tensor, w_hat: torch.Tensor, group_size: int) -> torch.Tensor:
    """:func:`sqnr_db` of every group: float64 ``[N, n_groups]`` for ``[N, K]`` weights.

    +inf where a group is exact (e.g. an all-zero group decoded to zeros), 0 dB where it decoded
    to zeros but was not zero, −inf where it is zero but did not decode to zeros.
    """
    w = w.detach().double()
    noise = grouped((w - w_hat.detach().double()).square(), group_size).sum(-1)
    signal = grouped(w.square(), group_size).sum(-1)
    with torch.no_grad():
        db = 10 * torch.log10(signal / noise)
    return torch.where(noise == 0, float("inf"), db)


class LowSQNRWarning(UserWarning):
    """A quantized weight (or layer) has a group whose SQNR is below the warning threshold."""


def warn_low_sqnr(names_db: list[tuple[str, float]], threshold_db: float | None, stacklevel: int = 3) -> list[str]:
    """One :class:`LowSQNRWarning` naming every ``(name, worst-group SQNR)`` below ``threshold_db``
    (``None``: no check), worst first. Returns the names."""
    if threshold_db is None:
        return []
    low = sorted(((n, db) for n, db in names_db if db is not None and db < threshold_db), key=lambda t: t[1])
    if low:
        listed = ", ".join(f"{n} ({db:.1f} dB)" for n, db in low)
        warnings.warn(f"{len(low)} quantized weight(s) have a group below {threshold_db} dB SQNR "
                      f"(0 dB = no better than zeros): {listed}. Calibrate them, skip them, or pass "
                      "warn_sqnr_db=None to accept this.", LowSQNRWarning, stacklevel=stacklevel)
    return [n for n, _ in low]


class PackedWeight:
    """What :class:`PoTWeight` and :class:`IntWeight` share: shape, sizes, device moves and the
    dtype/shape check. A subclass is a dataclass with its tensors, ``scales`` among them
    (``[n_groups, out_features]``), then ``in_features`` and ``config``; it lists its tensors in
    :meth:`tensors` and their expected dtype and shape in :meth:`expected`."""

    scales: torch.Tensor
    in_features: int

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def expected(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        raise NotImplementedError

    @property
    def out_features(self) -> int:
        return self.scales.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def group_size(self) -> int:
        return self.config.groups_in(self.in_features)[0]  # type: ignore[attr-defined]

    @property
    def nbytes(self) -> int:
        """Packed bytes: every stored tensor (codes, signs, scales, zero points)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.out_features * self.in_features)

    def to(self, device: torch.device | str):
        return dataclasses.replace(self, **{k: t.to(device) for k, t in self.tensors().items()})  # type: ignore

    def check_tensors(self) -> None:
        """Raise ValueError unless every tensor has the dtype and shape of :meth:`expected`."""
        for name, (dtype, shape) in self.expected().items():
            t = getattr(self, name)
            if t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(f"{type(self).__name__}.{name}: expected {dtype} {shape}, "
                                 f"got {t.dtype} {tuple(t.shape)}")

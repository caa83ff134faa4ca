"""Tensor-parallel pieces of a packed weight: what one rank of a TP group holds (no engine import).

A packed weight stores ``qweight [rows, N]`` (words of one output column, consecutive along K) and
``scales`` / ``zeros [n_groups, N]`` (FORMAT.md §3–4), so

* **column-parallel** (split N, also the shards of a merged ``qkv_proj`` / ``gate_up_proj``) is a plain
  slice of the last dimension of every tensor: :func:`slice_n`;
* **row-parallel** (split K into ``[k0, k1)`` per rank) is clean only when ``k0`` and ``k1`` fall on the
  32-code unit (word rows) and on group boundaries. :func:`slice_k` serves *any* ``[k0, k1)``: it starts
  the rank's words at the unit boundary ``ks = 32·⌊k0/32⌋`` at or before ``k0`` (the ``lead = k0 − ks``
  columns before ``k0`` are multiplied by zero activations, see :class:`KSlice`), and gives the rank the
  scales of the groups it touches, re-expressed with the largest group size ``G' ∈ {32, 64, 128, 256}``
  that divides both ``G`` and ``ks`` (each global scale repeated ``G / G'`` times), so that the local
  piece is an ordinary :class:`PoTWeight` / :class:`IntWeight` the kernels run unchanged. Per-channel
  weights keep their one scale per row. The decoded local piece equals the columns ``[k0, k1)`` of the
  unsharded decode bit for bit (same codes, same scale per weight).

Cost of the re-grouping: the scales (and int zero points) of a row-parallel shard take ``G / G'`` times
their share, e.g. SmolLM2 ``o_proj`` at TP = 3 (K per rank 192, G = 128 → G' = 64): 0.25 instead of
0.125 bits per weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..format import GROUP_SIZES, IntWeight, PoTWeight, pack_codes, packed_rows, unpack_codes
from ..format.config import IntConfig, PoTConfig
from ..format.layout import WORD_BITS

PackedWeight = PoTWeight | IntWeight


@dataclass
class KSlice:
    """Rank-local piece of a row-parallel layer: ``weight`` covers input columns ``[k0 − lead, k1)``.

    ``weight.dequantize()[:, lead:]`` is the unsharded decode's ``[:, k0:k1]``; a matmul pads the rank's
    activations ``x [..., k1 − k0]`` with ``lead`` zero columns on the left (``lead = 0`` when ``k0`` is a
    multiple of 32, the clean case).
    """

    weight: PackedWeight
    lead: int

    def dequantize(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """Decoded ``[N, k1 − k0]``: the rank's columns of the full weight."""
        return self.weight.dequantize(dtype)[:, self.lead:]


def even_k_ranges(in_features: int, tp_size: int) -> list[tuple[int, int]]:
    """The ``[k0, k1)`` of every rank when K is split evenly (as vLLM's row-parallel layers do)."""
    if tp_size < 1 or in_features % tp_size:
        raise ValueError(f"K = {in_features} does not split evenly over tensor-parallel size {tp_size}")
    step = in_features // tp_size
    return [(r * step, (r + 1) * step) for r in range(tp_size)]


def rows_shard_cleanly(in_features: int, tp_size: int) -> bool:
    """True when every rank's K range starts and ends on a 32-code unit, i.e. an engine's loader can
    narrow ``qweight`` rows itself (``rows / tp`` rows per rank); otherwise every rank reads all rows."""
    return in_features % tp_size == 0 and (in_features // tp_size) % WORD_BITS == 0


def local_group_size(group_size: Optional[int], start: int) -> Optional[int]:
    """Largest group size in GROUP_SIZES dividing ``group_size`` and ``start`` (``None``: per channel)."""
    if group_size is None:
        return None
    fits = [g for g in GROUP_SIZES if group_size % g == 0 and start % g == 0]
    if not fits:
        raise ValueError(f"no group size divides G = {group_size} and the shard start {start}")
    return max(fits)


def slice_k(cfg: PoTConfig | IntConfig, in_features: int, k0: int, k1: int, qweight: torch.Tensor,
            scales: torch.Tensor, zeros: Optional[torch.Tensor] = None, qweight_start: int = 0) -> KSlice:
    """Input columns ``[k0, k1)`` of a packed weight of ``in_features`` columns as a rank-local piece.

    Args:
        cfg: the weight's code (its ``group_size`` refers to the full K).
        in_features: K of the full weight.
        k0, k1: the rank's columns, ``0 ≤ k0 < k1 ≤ K``.
        qweight: int32 words ``[rows, N]`` holding the codes from column ``qweight_start`` on (0: the whole
            weight; ``k0`` when the loader already narrowed the rows, which needs ``k0 % 32 == 0``).
        scales: fp16 ``[n_groups, N]`` of the full weight (every group; each rank picks its own).
        zeros: uint8 ``[n_groups, N]`` for int weights.
    Returns:
        :class:`KSlice` whose weight is a standard PoTWeight / IntWeight with ``k1 − ks`` columns.
    """
    if not 0 <= k0 < k1 <= in_features:
        raise ValueError(f"column range [{k0}, {k1}) is not inside K = {in_features}")
    if qweight_start % WORD_BITS or qweight_start > k0:
        raise ValueError(f"qweight must start on a 32-code unit at or before k0 = {k0}, got {qweight_start}")
    kind, bits = cfg.kind, cfg.bits
    ks = k0 - k0 % WORD_BITS
    kl = k1 - ks  # local K
    first = (ks - qweight_start) * bits // WORD_BITS
    rows = packed_rows(kl, bits)
    q = qweight[first:first + rows]
    if q.shape[0] != rows:
        raise ValueError(f"qweight has {qweight.shape[0]} rows from column {qweight_start}; columns "
                         f"[{ks}, {k1}) need rows {first}…{first + rows}")
    if kl % WORD_BITS and k1 < in_features:
        # The last unit also holds the next rank's codes: zero them (the format pads with zero codes).
        q = pack_codes(unpack_codes(q, kind, bits, -(-kl // WORD_BITS) * WORD_BITS)[:, :kl], kind, bits)
    g_local = local_group_size(cfg.group_size, ks)
    if g_local is None:  # per channel: one scale per row, whatever the columns
        s, z = scales, zeros
    else:
        g, _ = cfg.groups_in(in_features)
        rep, first_g, n_g = g // g_local, ks // g_local, -(-kl // g_local)
        s = scales.repeat_interleave(rep, 0)[first_g:first_g + n_g]
        z = None if zeros is None else zeros.repeat_interleave(rep, 0)[first_g:first_g + n_g]
    local_cfg = type(cfg)(bits=bits, group_size=g_local)
    w = (PoTWeight(q.contiguous(), s.contiguous(), kl, local_cfg) if kind == "pot"
         else IntWeight(q.contiguous(), s.contiguous(), z.contiguous(), kl, local_cfg))
    w.check_tensors()
    return KSlice(w, k0 - ks)


def slice_n(w: PackedWeight, n0: int, n1: int) -> PackedWeight:
    """Output rows ``[n0, n1)`` of a packed weight (column-parallel shard): a slice of every tensor's N."""
    if not 0 <= n0 < n1 <= w.out_features:
        raise ValueError(f"row range [{n0}, {n1}) is not inside N = {w.out_features}")
    return type(w)(**{name: t[:, n0:n1].contiguous() for name, t in w.tensors().items()},
                   in_features=w.in_features, config=w.config)


def rank_piece(w: PackedWeight, k0: int, k1: int) -> KSlice:
    """:func:`slice_k` of a whole packed weight (the rank reads every row)."""
    return slice_k(w.config, w.in_features, k0, k1, w.qweight, w.scales, getattr(w, "zeros", None))


__all__ = ["KSlice", "even_k_ranges", "local_group_size", "rank_piece", "rows_shard_cleanly", "slice_k",
           "slice_n"]

"""GPTQ on the PoT grid (and, through the same code, on the uniform-int grid).

GPTQ (Frantar et al., arXiv 2210.17323) rounds a weight one input column at a time and pushes
each column's rounding error onto the columns not yet rounded, through the inverse of the layer's
Hessian ``H = Σ x xᵀ`` (its inputs on calibration text). The update accepts any grid, so here a
column is rounded to the nearest level *in value* of the stored format under its fixed storable
scale: ``±S·2^E`` for PoT (not the log-domain rule of :func:`quantize_pot`; the value rule is what
minimises the error GPTQ feeds back), ``(q − z)·s`` for int.

How it is arranged (:func:`gptq_model`):

* **Scales first, then fixed.** Per group of G contiguous input columns the scale is chosen up
  front — PoT: PoTPTQ step 1, activation-weighted by ``diag(H)`` by default
  (:func:`calibration.init.init_scales`); int: static min/max (:func:`rtn_int_params`) — and
  never changes while columns are rounded, so act-order needs no group bookkeeping and the
  packed layout is the one every other method uses.
* **Block by block on the quantized model's own activations.** Block ℓ's Hessians come from
  the outputs of the already-quantized blocks < ℓ (as PoTPTQ step 2 is fed in ``refine.py``).
  Linears that read the same tensor (q/k/v, gate/up, GPT-2's c_attn alone) share one Hessian and
  are rounded together as one stacked weight. By default all Hessians of a block come from one
  pass of the float block (stopped at its last linear's input); with ``true_sequential`` the
  groups are quantized in call order and each group's Hessian is taken with the earlier groups of
  the same block already quantized (one pass per group, each stopped at the group's first linear:
  about twice the forward work).
* **Act-order, damping, lazy batches.** Columns go in order of decreasing ``diag(H)``;
  ``damp · mean(diag H)`` is added to the diagonal; the feedback inside a batch of
  ``block_size`` columns is applied column by column and to the rest of the matrix once per batch
  (the inverse Hessian enters through its upper Cholesky factor).
* **Packed by the format.** The rounded values are exactly representable (``S·2^E`` and
  ``(q − z)·s`` are exact in fp32), so :func:`quantize_pot` / :func:`quantize_int` given the same
  scales return codes equal to the GPTQ decisions bit for bit; every layer is checked.
* **Optional scale refits** (``scale_fits``). Step 1 chose each scale for plain rounding; once GPTQ
  has fixed the codes, the per-row least-squares scales under H (:func:`fit_scales`, groups of a
  row coupled through H) fit them better, and GPTQ run again under those scales may choose better
  codes. Each round keeps whichever candidate has the lowest ``‖(W − Q) X‖²``.
* **Optional refine.** PoTPTQ step 2 afterwards with the codes frozen: ``Ŝ = S·(1+Γ)``, only Γ
  learns (``refine.py``'s step 2 recomputes E from Ŝ, which would undo GPTQ's decisions).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from potkernels.format.common import expand_groups
from potkernels.format.config import IntConfig, PoTConfig
from potkernels.format.pot import clamp_scales, quantize_pot
from potkernels.format.uniform import clamp_int_scales, quantize_int, rtn_int_params
from potkernels.integrations.hf import LayerReport, layer_report, set_submodule
from potkernels.nn import float_weight, linear_class_for

from .init import init_scales
from .refine import _run, block_linears, block_stream, fit_gammas, input_channel_weights
from .threads import serial

if TYPE_CHECKING:
    from .stream import BlockLoop

log = logging.getLogger("potkernels.calibration")

DEFAULT_DAMP = 0.01  # fraction of mean(diag H) added to the diagonal
DEFAULT_BLOCK_SIZE = 128  # lazy-batch width (columns)
DAMP_RETRIES = 5  # ×10 damping each time a Cholesky factorisation fails
DEFAULT_SCALE_FITS = 2  # least-squares scale refit + GPTQ rounds per linear (SmolLM2 PoT3: 47.85 → 45.90)
# The frozen-code refine: one pass, one window per Adam step, a larger step than two-step's. On SmolLM2 PoT3
# (CLI defaults, 32 × 512 tokens) a quarter of the work of 4 passes × 2 windows at 1e-3, and no worse:
# 4-window WikiText-2 test perplexity 59.84 vs 62.31 (README, issue 20).
DEFAULT_REFINE_EPOCHS = 1
DEFAULT_REFINE_LR = 2e-3
DEFAULT_REFINE_BATCH = 1


# ---------------------------------------------------------------------------------------------
# Grids: fixed scales and "nearest level in value" for one column


class Grid:
    """Rounding of a weight ``[N, K]`` onto a format's levels under fixed per-group scales.

    ``round_column(w, j)`` rounds column ``j`` (original index) of ``w``: ``[N]`` → ``[N]`` values
    on the grid; ``columns(cols, dtype)`` does the same for a batch of columns with the per-column
    lookups done once (GPTQ's inner loop). ``pack(q)`` stores a matrix of such values with the
    format's own quantizer and checks that its codes are the ones decided here.
    """

    cfg: PoTConfig | IntConfig
    g: int  # group size: column j is under scale column j // g

    def round_column(self, w: torch.Tensor, j: int) -> torch.Tensor:
        raise NotImplementedError

    def columns(self, cols: torch.Tensor, dtype: torch.dtype) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """A rounder for the columns ``cols`` (original indices, int64 ``[B]``): ``f(w, i)`` rounds
        ``w [N]`` as column ``cols[i]``, equal bit for bit to ``round_column(w, cols[i])`` in ``dtype``."""
        js = cols.tolist()
        return lambda w, i: self.round_column(w, js[i])

    def round(self, w: torch.Tensor) -> torch.Tensor:
        """Every column rounded independently (plain rounding with the same scales): ``[N, K]``."""
        return torch.stack([self.round_column(w[:, j], j) for j in range(w.shape[1])], dim=1)

    def pack(self, q: torch.Tensor):
        raise NotImplementedError


def pot_cuts(qmax: int) -> list[float]:
    """``0.75·2^e`` for e = 1 … qmax: ``|w| ≥ S·cut_e`` moves ``|w|`` from level ``S·2^(e−1)`` up to ``S·2^e``."""
    return [0.75 * 2.0**level for level in range(1, qmax + 1)]


def pot_round_nearest(w: torch.Tensor, s: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest PoT level in value: ``(E, sign)`` int32 for weights ``w`` under scales ``s`` (same shape).

    ``|w|`` goes to level ``S·2^E``, E ∈ [0, qmax], with the cut between ``S·2^(e−1)`` and ``S·2^e``
    at their midpoint ``0.75·S·2^e`` (a tie goes up). The cuts are exact products of the storable S
    (≤ 11 significant bits), so the comparison is exact. ``w == 0`` gives E = 0, sign 0 (the format
    has no zero level); ``S == 0`` gives code 0, as :func:`potkernels.format.pot.pot_encode` stores it.
    """
    a = w.abs()
    e = torch.zeros_like(a, dtype=torch.int32)
    for cut in pot_cuts(qmax):
        e += (a >= s * cut).to(torch.int32)
    live = s > 0
    return torch.where(live, e, 0), (live & (w < 0)).to(torch.int32)


def pot_round_values(w: torch.Tensor, s: torch.Tensor, qmax: int) -> torch.Tensor:
    """The nearest PoT level's value ``±S·2^E`` (:func:`pot_round_nearest`), ``w``'s dtype and shape."""
    e, sign = pot_round_nearest(w, s, qmax)
    return torch.where(sign.bool(), -s, s) * torch.exp2(e.to(w.dtype))


class _PoTColumns:
    """:func:`pot_round_nearest` for a batch of columns, its per-column tables built once.

    Per column ``i``: ``cuts[i]`` ``[qmax, N]`` (``S·cut_e``) and ``levels[i]`` ``[2·(qmax+1), N]``,
    the values ``S·2^E`` then ``−S·2^E`` (``+0`` where ``S = 0``, as the sign rule stores it); a
    weight's level is found by counting the cuts below ``|w|`` and picking by sign."""

    def __init__(self, scales: torch.Tensor, qmax: int, dtype: torch.dtype) -> None:
        s = scales.to(dtype).t().contiguous()[:, None, :]  # [B, 1, N]
        self.cuts = s * torch.tensor(pot_cuts(qmax), dtype=dtype, device=s.device)[None, :, None]
        pos = s * torch.exp2(torch.arange(qmax + 1, dtype=dtype, device=s.device))[None, :, None]
        self.levels = torch.cat([pos, torch.where(s > 0, -pos, pos)], dim=1)
        self.n_levels = qmax + 1

    def __call__(self, w: torch.Tensor, i: int) -> torch.Tensor:
        e = (w.abs()[None] >= self.cuts[i]).sum(0)
        return self.levels[i].gather(0, torch.where(w < 0, e + self.n_levels, e)[None])[0]


class PoTGrid(Grid):
    """PoT levels ``±S·2^E`` with fixed storable level scales ``scales`` float32 ``[N, n_groups]``."""

    def __init__(self, cfg: PoTConfig, scales: torch.Tensor, k: int) -> None:
        self.cfg, self.k = cfg, k
        self.scales = clamp_scales(scales, cfg.bits)  # the storable S (unchanged if already storable)
        self.g = cfg.groups_in(k)[0]

    def round_column(self, w: torch.Tensor, j: int) -> torch.Tensor:
        return pot_round_values(w, self.scales[:, j // self.g].to(w.dtype), self.cfg.qmax)

    def columns(self, cols: torch.Tensor, dtype: torch.dtype) -> Callable[[torch.Tensor, int], torch.Tensor]:
        return _PoTColumns(self.scales[:, cols // self.g], self.cfg.qmax, dtype)

    def codes(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, sign)`` of the nearest levels to ``q [N, K]`` (of grid values: exact, ``|q| / S`` is 2^E)."""
        s = expand_groups(self.scales.t().contiguous(), self.g, self.k).to(q.dtype)
        return pot_round_nearest(q, s, self.cfg.qmax)

    def round(self, w: torch.Tensor) -> torch.Tensor:
        s = expand_groups(self.scales.t().contiguous(), self.g, self.k).to(w.dtype)
        return pot_round_values(w, s, self.cfg.qmax)

    def unit(self, q: torch.Tensor) -> torch.Tensor:
        """``±2^E`` float32 ``[N, K]``: the grid values with the scale divided out."""
        e, sign = self.codes(q)
        return torch.where(sign.bool(), -1.0, 1.0) * torch.exp2(e.float())

    def clamp(self, s: torch.Tensor) -> torch.Tensor:
        return clamp_scales(s, self.cfg.bits)

    def pack(self, q: torch.Tensor):
        packed = quantize_pot(q.float(), self.cfg, scales=self.scales)
        e, sign = self.codes(q)
        pe, ps = packed.codes()
        if not (torch.equal(pe, e) and torch.equal(ps, sign)):
            raise RuntimeError("quantize_pot did not reproduce the GPTQ exponent/sign decisions")
        return packed


def int_round_values(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: int) -> torch.Tensor:
    """The nearest int level's value ``(q − z)·s``, ``q = clamp(round(w / s) + z, 0, qmax)`` (shapes broadcast)."""
    return ((torch.round(w / s) + z).clamp(0, qmax) - z) * s


class IntGrid(Grid):
    """Uniform asymmetric int levels ``(q − z)·s``, scales/zeros float32 ``[N, n_groups]`` fixed (min/max)."""

    def __init__(self, cfg: IntConfig, scales: torch.Tensor, zeros: torch.Tensor, k: int) -> None:
        self.cfg, self.k = cfg, k
        self.scales = clamp_int_scales(scales, cfg.bits).float()
        self.zeros = torch.round(zeros.float()).clamp(0, cfg.qmax)
        self.g = cfg.groups_in(k)[0]

    def round_column(self, w: torch.Tensor, j: int) -> torch.Tensor:
        s = self.scales[:, j // self.g].to(w.dtype)
        z = self.zeros[:, j // self.g].to(w.dtype)
        return int_round_values(w, s, z, self.cfg.qmax)

    def columns(self, cols: torch.Tensor, dtype: torch.dtype) -> Callable[[torch.Tensor, int], torch.Tensor]:
        s = self.scales[:, cols // self.g].to(dtype).t().contiguous()  # [B, N]
        z = self.zeros[:, cols // self.g].to(dtype).t().contiguous()
        return lambda w, i: int_round_values(w, s[i], z[i], self.cfg.qmax)

    def _expanded(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        s = expand_groups(self.scales.t().contiguous(), self.g, self.k).to(dtype)
        z = expand_groups(self.zeros.t().contiguous(), self.g, self.k).to(dtype)
        return s, z

    def codes(self, q: torch.Tensor) -> torch.Tensor:
        s, z = self._expanded(q.dtype)
        return (torch.round(q / s) + z).to(torch.int32)

    def round(self, w: torch.Tensor) -> torch.Tensor:
        s, z = self._expanded(w.dtype)
        return int_round_values(w, s, z, self.cfg.qmax)

    def unit(self, q: torch.Tensor) -> torch.Tensor:
        """``q − z`` float32 ``[N, K]``."""
        s, z = self._expanded(q.dtype)
        return torch.round(q / s).float()

    def clamp(self, s: torch.Tensor) -> torch.Tensor:
        return clamp_int_scales(s, self.cfg.bits).float()

    def pack(self, q: torch.Tensor):
        packed = quantize_int(q.float(), self.cfg, scales=self.scales, zeros=self.zeros)
        if not torch.equal(packed.codes(), self.codes(q)):
            raise RuntimeError("quantize_int did not reproduce the GPTQ code decisions")
        return packed


def make_grid(w: torch.Tensor, cfg: PoTConfig | IntConfig, hessian: Optional[torch.Tensor] = None,
              act_weighted: bool = True) -> Grid:
    """Fixed scales for ``w [N, K]``: PoT step 1 (weighted by ``diag(hessian)`` when ``act_weighted``),
    or int min/max."""
    k = w.shape[1]
    if isinstance(cfg, IntConfig):
        s, z = rtn_int_params(w, cfg)
        return IntGrid(cfg, s, z, k)
    col_weights = None
    if act_weighted and hessian is not None:
        col_weights = input_channel_weights(torch.diagonal(hessian).float().clamp_min(0))
    return PoTGrid(cfg, init_scales(w.float(), cfg, col_weights=col_weights), k)


# ---------------------------------------------------------------------------------------------
# The GPTQ core on one weight matrix


def prepare_hessian(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped copy of ``H [K, K]`` (float64 math is the caller's choice of dtype) and the dead-input mask.

    A column whose input was always zero (``H_jj = 0``) gets ``H_jj = 1``: its error then reaches
    no other column. ``damp · mean(diag H)`` is added to the whole diagonal.
    """
    h = h.clone()
    diag = torch.diagonal(h)
    dead = diag <= 0
    diag[dead] = 1.0
    diag += damp * diag.mean()
    return h, dead


def _upper_inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``H⁻¹`` (GPTQ's form of the inverse), more damping if H is not PD."""
    with serial():  # LAPACK's result depends on the thread count
        return _upper_inverse_cholesky_serial(h, damp)


def _upper_inverse_cholesky_serial(h: torch.Tensor, damp: float) -> torch.Tensor:
    extra = 0.0
    for attempt in range(DAMP_RETRIES + 1):
        hh = h if extra == 0.0 else h + extra * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype,
                                                                                      device=h.device)
        low, info = torch.linalg.cholesky_ex(hh)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(low)
            up, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                if extra:
                    log.warning("GPTQ: Hessian needed extra damping %.3g to factorise", extra)
                return up
        extra = max(10 * extra, damp * 10)
    raise FloatingPointError("GPTQ: the Hessian is not positive definite even with heavy damping")


class OutputError:
    """``‖(W − Q) X‖² / ‖W X‖²`` from ``H = X Xᵀ`` for candidates ``Q`` of one ``W [N, K]``, ``H [K, K]``.

    The denominator is computed once (a caller comparing several candidates pays one float64
    ``[N, K] @ [K, K]`` product per candidate instead of two); each value equals
    :func:`relative_output_error`'s bit for bit."""

    def __init__(self, w: torch.Tensor, h: torch.Tensor) -> None:
        self.w, self.h = w, h.double()
        wd = w.double()
        wh = wd @ self.h
        with serial():  # whole-tensor sums: one reduction order at any thread count
            self.den = float((wh * wd).sum())

    def __call__(self, q: torch.Tensor) -> float:
        d = (self.w - q).double()
        dh = d @ self.h
        with serial():
            return float((dh * d).sum()) / max(self.den, 1e-300)


def relative_output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """``‖(W − Q) X‖² / ‖W X‖²`` from ``H = X Xᵀ`` (no activations needed)."""
    return OutputError(w, h)(q)


@torch.no_grad()
def gptq_factor(h: torch.Tensor, damp: float = DEFAULT_DAMP, act_order: bool = True,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`gptq_quantize` needs from ``h [K, K]``: ``(perm [K] int64, U [K, K] upper)``, the column
    order and the upper Cholesky factor of the damped, permuted ``H⁻¹`` (``dtype``). It depends on H only,
    so several GPTQ runs on one Hessian (the scale refits) factorise it once."""
    if damp < 0:
        raise ValueError(f"need damp ≥ 0, got {damp}")
    hk, _ = prepare_hessian(h.to(dtype), damp)
    perm = torch.argsort(torch.diagonal(hk), descending=True, stable=True) if act_order else torch.arange(h.shape[0])
    perm = perm.to(h.device)
    return perm, _upper_inverse_cholesky(hk[perm][:, perm], damp)


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, grid: Grid, damp: float = DEFAULT_DAMP,
                  block_size: int = DEFAULT_BLOCK_SIZE, act_order: bool = True,
                  dtype: torch.dtype = torch.float32,
                  factor: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """GPTQ-round ``w [N, K]`` with Hessian ``h [K, K]`` onto ``grid`` → grid values ``[N, K]`` (``dtype``).

    Lazy-batch form: inside a batch of ``block_size`` columns each rounding error updates the
    batch's remaining columns at once; the rest of the matrix is updated once per batch.
    ``factor``: :func:`gptq_factor` of the same ``h``, ``damp``, ``act_order``, ``dtype`` (computed here if None).
    """
    n, k = w.shape
    if tuple(h.shape) != (k, k):
        raise ValueError(f"Hessian must be [{k}, {k}], got {tuple(h.shape)}")
    if damp < 0 or block_size < 1:
        raise ValueError(f"need damp ≥ 0 and block_size ≥ 1, got {damp}, {block_size}")
    perm, u = factor if factor is not None else gptq_factor(h, damp, act_order, dtype)
    perm = perm.to(w.device)
    wk = w.to(dtype)[:, perm]  # a copy; u: [K, K] upper, rows = scaled rows of the shrinking H_F⁻¹
    qt = torch.empty(k, n, dtype=dtype, device=w.device)  # transposed: a column is a contiguous row
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = wk[:, i1:i2].t().contiguous()  # [B, N]: the batch's columns as rows
        err1 = torch.empty_like(w1)
        u1 = u[i1:i2, i1:i2]
        diag = torch.diagonal(u1).tolist()
        round_col = grid.columns(perm[i1:i2], dtype)
        for i in range(i2 - i1):
            col = w1[i]
            qc = round_col(col, i)
            qt[i1 + i] = qc
            e = (col - qc) / diag[i]
            w1[i + 1:] -= u1[i, i + 1:][:, None] * e[None, :]
            err1[i] = e
        wk[:, i2:] -= err1.t() @ u[i1:i2, i2:]
    out = torch.empty(n, k, dtype=dtype, device=w.device)
    out[:, perm] = qt.t()
    return out


@torch.no_grad()
def gptq_reference(w: torch.Tensor, h: torch.Tensor, grid: Grid, damp: float = DEFAULT_DAMP,
                   act_order: bool = True) -> torch.Tensor:
    """The slow textbook form (for tests): float64, one column at a time, with the inverse of the
    Hessian over the not-yet-rounded columns recomputed from scratch for every column (OBQ's
    update ``W_F −= (w_j − q_j) / [H_F⁻¹]_jj · [H_F⁻¹]_j,:``). Same result as :func:`gptq_quantize`."""
    wk = w.double().clone()
    hk, _ = prepare_hessian(h.double(), damp)
    k = w.shape[1]
    order = torch.argsort(torch.diagonal(hk), descending=True, stable=True).tolist() if act_order else list(range(k))
    q = torch.empty_like(wk)
    remaining = list(order)
    while remaining:
        j = remaining[0]
        hinv = torch.linalg.inv(hk[remaining][:, remaining])
        qc = grid.round_column(wk[:, j], j)
        q[:, j] = qc
        e = (wk[:, j] - qc) / hinv[0, 0]
        wk[:, remaining] -= e[:, None] * hinv[0][None, :]
        remaining = remaining[1:]
    return q


# ---------------------------------------------------------------------------------------------
# Scales refitted to the codes: least squares under H


@torch.no_grad()
def fit_scales(w: torch.Tensor, unit: torch.Tensor, h: torch.Tensor, group_size: int,
               old_scales: torch.Tensor) -> torch.Tensor:
    """Per-row least-squares scales for fixed codes: ``argmin_s ‖(W − U·s) X‖²`` under ``H = X Xᵀ``.

    Args:
        w: float weight ``[N, K]``; unit: the codes with the scale divided out (``±2^E`` or ``q − z``),
            ``[N, K]``; h: ``[K, K]`` (already damped); old_scales: ``[N, n_groups]`` float32, kept
            where the fit is not positive and where it is 0 (an all-zero group stays exactly zero).
    Returns float32 ``[N, n_groups]`` (unclamped). Groups of one row are coupled through H, so each
    row solves an ``n_groups × n_groups`` system ``A s = b``, ``A_gh = u_gᵀ H u_h``, ``b_g = u_gᵀ H w``.
    """
    n, k = w.shape
    ng = old_scales.shape[1]
    pad = ng * group_size - k
    wd, ud, hd = w.double(), unit.double(), h.double()
    if pad:
        wd, ud = F.pad(wd, (0, pad)), F.pad(ud, (0, pad))
        hd = F.pad(hd, (0, pad, 0, pad))
    hg = hd.view(ng, group_size, ng, group_size)
    rows = max(1, (1 << 24) // (k * ng))  # bound the [rows, K, ng] intermediate (~128 MiB of float64)
    fits = []
    for r0 in range(0, n, rows):
        ug = ud[r0:r0 + rows].view(-1, ng, group_size)
        b = ((wd[r0:r0 + rows] @ hd).view(-1, ng, group_size) * ug).sum(-1)  # [rows, ng]
        # A[r, g, h] = Σ_ab U[r,g,a] H[g,a,h,b] U[r,h,b], contracted one side at a time (N·K² work)
        uh = torch.einsum("rga,gahb->rhbg", ug, hg)
        a_mat = torch.einsum("rhbg,rhb->rgh", uh, ug)
        with serial():
            fits.append(torch.linalg.solve_ex(a_mat, b.unsqueeze(-1)))
    s = torch.cat([f[0] for f in fits]).squeeze(-1).float()
    info = torch.cat([f[1] for f in fits])
    ok = (info == 0)[:, None] & torch.isfinite(s) & (s > 0) & (old_scales > 0)
    return torch.where(ok, s, old_scales.float())


# ---------------------------------------------------------------------------------------------
# Frozen-code refinement (PoTPTQ step 2 with E fixed)


class FrozenCodeLinear(nn.Module):
    """A linear computing ``U ⊙ Ŝ``, ``Ŝ = S·(1 + Γ)`` made storable (STE), codes ``U`` frozen.

    ``U`` float32 ``[N, K]`` is ``±2^E`` (PoT) or ``q − z`` (int); only ``gamma`` ``[N, n_groups]`` learns.
    """

    def __init__(self, unit: torch.Tensor, scales: torch.Tensor, grid: Grid, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.grid = grid
        self.register_buffer("unit", unit.float())
        self.register_buffer("s", scales.float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.gamma = nn.Parameter(torch.zeros_like(self.s))

    def scales(self) -> torch.Tensor:
        s_hat = self.s * (1 + self.gamma)
        stored = self.grid.clamp(s_hat.detach())
        return s_hat + (stored - s_hat).detach()

    def weight_values(self) -> torch.Tensor:
        k = self.unit.shape[1]
        g = self.grid.g
        return self.unit * self.scales().repeat_interleave(g, dim=1)[:, :k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_values().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


# ---------------------------------------------------------------------------------------------
# Block by block over a model


@dataclass
class GPTQBlockReport:
    """One block: per linear, the relative output error (on its calibration inputs, from H) of plain
    rounding vs GPTQ under the same scales; with refine, the block output MSE before/after step 2."""

    index: int
    err_rtn: dict[str, float]
    err_gptq: dict[str, float]
    loss_gptq: Optional[float]
    loss_refined: Optional[float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stop(Exception):
    pass


def _input_groups(block: nn.Module, names: list[str], x: torch.Tensor, extras: dict[int, tuple],
                  dtype: torch.dtype) -> list[list[str]]:
    """Linears of ``block`` grouped by the tensor they read, in call order (one no-grad pass on ``x``).

    A linear the forward never calls is left out (it keeps plain step-1 rounding)."""
    seen: list[tuple[torch.Tensor, list[str]]] = []

    def hook(name: str):
        def f(_m, args):
            for t, group in seen:
                if args[0] is t:
                    group.append(name)
                    return
            seen.append((args[0], [name]))
        return f

    hooks = [block.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            _run(block, x, extras, dtype)
    finally:
        for hk in hooks:
            hk.remove()
    return [g for _, g in seen]


def _accumulate_hessians(block: nn.Module, groups: list[list[str]], xs: list[torch.Tensor], extras: dict[int, tuple],
                         dtype: torch.dtype, stop_after: bool, want_outputs: bool
                         ) -> tuple[dict[int, torch.Tensor], Optional[list[torch.Tensor]], int]:
    """``Σ x xᵀ`` float32 ``[K, K]`` per input group (hook on its first linear) over ``xs``.

    ``stop_after``: end each forward once every group's input is seen (nothing after it is needed).
    Returns ``(hessians, outputs or None, tokens)``."""
    hs: dict[int, torch.Tensor] = {}
    tokens = 0
    pending: set[int] = set()

    def hook(i: int):
        def f(_m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            hs[i] = hs[i].addmm_(x.t(), x) if i in hs else x.t() @ x
            pending.discard(i)
            if stop_after and not pending:
                raise _Stop
        return f

    hooks = [block.get_submodule(g[0]).register_forward_pre_hook(hook(i)) for i, g in enumerate(groups)]
    outs: Optional[list[torch.Tensor]] = [] if want_outputs else None
    try:
        with torch.no_grad():
            for x in xs:
                pending.update(range(len(groups)))
                tokens += x.shape[0] * x.shape[1]
                try:
                    y = _run(block, x, extras, dtype)
                    if outs is not None:
                        outs.append(y.to(x.device, x.dtype))
                except _Stop:
                    pass
    finally:
        for hk in hooks:
            hk.remove()
    return hs, outs, tokens


def gptq_with_scale_fits(w: torch.Tensor, h: torch.Tensor, grid: Grid, scale_fits: int = 0,
                         damp: float = DEFAULT_DAMP, block_size: int = DEFAULT_BLOCK_SIZE,
                         act_order: bool = True) -> tuple[Grid, torch.Tensor]:
    """GPTQ, then ``scale_fits`` rounds of: scales refitted to the codes (:func:`fit_scales`), GPTQ again
    under them. Returns the ``(grid, values)`` with the lowest output error ``‖(W − Q) X‖²`` seen
    (each round's candidates: the old codes under the new scales, and the new GPTQ result)."""
    factor = gptq_factor(h, damp, act_order)  # one factorisation for every GPTQ run below
    q = gptq_quantize(w, h, grid, damp=damp, block_size=block_size, act_order=act_order, factor=factor)
    error = OutputError(w, h)
    best = (error(q), grid, q)
    h_damped = prepare_hessian(h.float(), damp)[0]
    for _ in range(scale_fits):
        unit = grid.unit(q)  # the codes, under the scales they were chosen with
        grid = _with_scales(grid, grid.clamp(fit_scales(w, unit, h_damped, grid.g, grid.scales)))
        kept = unit * expand_groups(grid.scales.t().contiguous(), grid.g, grid.k)
        q = gptq_quantize(w, h, grid, damp=damp, block_size=block_size, act_order=act_order, factor=factor)
        for cand in (kept, q):
            err = error(cand)
            if err < best[0]:
                best = (err, grid, cand)
    return best[1], best[2]


def _solve_group(block: nn.Module, names: list[str], h: torch.Tensor, cfg, act_weighted: bool, damp: float,
                 block_size: int, act_order: bool,
                 scale_fits: int = 0) -> dict[str, tuple[Grid, torch.Tensor, float, float]]:
    """GPTQ on the stacked weights of ``names`` (shared Hessian ``h``) → per name (grid, values, errors)."""
    ws = [float_weight(block.get_submodule(n)).float() for n in names]
    rows = [w.shape[0] for w in ws]
    w = torch.cat(ws, dim=0)
    grid0 = make_grid(w, cfg, h, act_weighted)
    q_rtn = grid0.round(w)  # plain rounding under the step-1 scales, for the report
    grid, q = gptq_with_scale_fits(w, h, grid0, scale_fits, damp=damp, block_size=block_size, act_order=act_order)
    out = {}
    r0 = 0
    for name, n_rows in zip(names, rows):
        sl = slice(r0, r0 + n_rows)
        sub = _sub_grid(grid, sl, w.shape[1])
        error = OutputError(w[sl], h)
        out[name] = (sub, q[sl].float(), error(q_rtn[sl]), error(q[sl]))
        r0 += n_rows
    return out


def _sub_grid(grid: Grid, rows: slice, k: int) -> Grid:
    if isinstance(grid, PoTGrid):
        return PoTGrid(grid.cfg, grid.scales[rows], k)
    assert isinstance(grid, IntGrid)
    return IntGrid(grid.cfg, grid.scales[rows], grid.zeros[rows], k)


def _packed_layer(module: nn.Module, grid: Grid, q: torch.Tensor) -> nn.Module:
    packed = grid.pack(q.to(float_weight(module).device))
    return linear_class_for(grid.cfg).from_weight(packed, module.bias)


def gptq_model(model: nn.Module, cfg: PoTConfig | IntConfig, calib_ids: torch.Tensor, *,
               batch_size: int = 8, skip: Iterable[str] = ("lm_head",), act_weighted: bool = True,
               damp: float = DEFAULT_DAMP, block_size: int = DEFAULT_BLOCK_SIZE, act_order: bool = True,
               true_sequential: bool = False, scale_fits: int = DEFAULT_SCALE_FITS, refine: bool = False,
               epochs: int = DEFAULT_REFINE_EPOCHS, lr: float = DEFAULT_REFINE_LR,
               lam: float = 0.1, refine_batch: int = DEFAULT_REFINE_BATCH, act_dtype: Optional[torch.dtype] = None,
               progress: bool = True, seed: int = 0,
               loop: Optional["BlockLoop"] = None) -> tuple[list[GPTQBlockReport], list[LayerReport]]:
    """GPTQ over every transformer block of ``model`` (in place), swapping its linears to packed layers.

    Args:
        calib_ids: LongTensor ``[n_samples, seq_len]``.
        batch_size: samples per forward while collecting Hessians (memory only).
        act_weighted: PoT scales by the ``diag(H)``-weighted step-1 search (else the data-free one).
        damp, block_size, act_order, true_sequential: see the module docstring.
        scale_fits: rounds of least-squares scale refits + GPTQ again per linear (:func:`gptq_with_scale_fits`).
        refine: afterwards, per block, learn Γ with the codes frozen (``epochs`` passes, Adam ``lr``,
            regulariser ``lam``, ``refine_batch`` samples per step) against the float block's outputs.
        loop: where blocks and activations live and where finished blocks are saved
            (:class:`calibration.stream.BlockLoop`; default: all in place, nothing saved).
    Returns per-block :class:`GPTQBlockReport` and the swapped layers' :class:`LayerReport` (full names).
    """
    # Hessian passes use big batches; refinement steps use ``refine_batch`` samples.
    from .stream import BlockLoop

    loop = loop or BlockLoop(model)
    blocks, dtype, act_dtype, xs, extras = block_stream(model, calib_ids, refine_batch if refine else batch_size,
                                                        act_dtype)
    start, xs, extras = loop.start(blocks, xs, extras, act_dtype, GPTQBlockReport)
    skip = tuple(skip)
    kind = "PoT" if isinstance(cfg, PoTConfig) else "int"
    bar = tqdm(range(start, len(blocks)), desc=f"{kind} GPTQ" + (" + refine" if refine else ""), unit="block",
               disable=not progress, initial=start, total=len(blocks))
    for idx in bar:
        t0 = time.perf_counter()
        block = loop.enter(blocks[idx])
        prefix, names = block_linears(model, block, skip)
        if not names:
            xs = loop.pass_through(idx, block, xs, extras, dtype, act_dtype)
            continue
        originals = {n: block.get_submodule(n) for n in names}
        weights = {n: float_weight(m).float() for n, m in originals.items()}
        groups = _input_groups(block, names, xs[0], extras, dtype)
        solved: dict[str, tuple[Grid, torch.Tensor, float, float]] = {}
        targets = None
        if true_sequential:
            for gi, group in enumerate(groups):
                first = gi == 0
                hs, outs, _ = _accumulate_hessians(block, [group], xs, extras, dtype,
                                                   stop_after=not (first and refine), want_outputs=first and refine)
                if first:
                    targets = outs
                solved.update(_solve_group(block, group, hs.pop(0), cfg, act_weighted, damp, block_size,
                                           act_order, scale_fits))
                for n in group:  # later groups see this one quantized
                    grid, q, _, _ = solved[n]
                    set_submodule(block, n, _packed_layer(originals[n], grid, q))
        else:
            hs, targets, _ = _accumulate_hessians(block, groups, xs, extras, dtype, stop_after=not refine,
                                                  want_outputs=refine)
            for gi, group in enumerate(groups):  # each Hessian freed once its linears are solved
                solved.update(_solve_group(block, group, hs.pop(gi), cfg, act_weighted, damp, block_size,
                                           act_order, scale_fits))
        # Linears never called (none in GPT-2 / Llama): plain rounding with data-free scales.
        for n in names:
            if n not in solved:
                w = weights[n]
                grid = make_grid(w, cfg, None, False)
                solved[n] = (grid, grid.round(w), float("nan"), float("nan"))
        loss_gptq = loss_refined = None
        if refine:
            fq = {}
            for n in names:
                grid, q, _, _ = solved[n]
                fq[n] = FrozenCodeLinear(grid.unit(q), grid.scales, grid, originals[n].bias)
                set_submodule(block, n, fq[n])
            outs, loss_gptq, loss_refined = fit_gammas(block, [m.gamma for m in fq.values()], xs, targets, extras,
                                                      epochs, lr, lam, seed + idx)
            for n, m in fq.items():
                grid, _, e_rtn, e_g = solved[n]
                new_s = m.scales().detach().clone()
                new_grid = _with_scales(grid, new_s)
                solved[n] = (new_grid, (m.unit * new_s.repeat_interleave(grid.g, 1)[:, :grid.k]), e_rtn, e_g)
        block_layers = []
        for n in names:
            grid, q, _, _ = solved[n]
            layer = _packed_layer(originals[n], grid, q)
            set_submodule(block, n, layer)
            block_layers.append(layer_report(f"{prefix}.{n}", weights[n], layer))
        del originals, weights, targets  # the float block is gone once packed
        if refine:
            outs = [o.to(act_dtype) for o in outs]
        else:
            with torch.no_grad():
                outs = [_run(block, x, extras, dtype).to(act_dtype) for x in xs]
        rep = GPTQBlockReport(idx, {n: solved[n][2] for n in names}, {n: solved[n][3] for n in names},
                              loss_gptq, loss_refined, time.perf_counter() - t0)
        del solved
        xs = loop.leave(idx, block, outs, rep, block_layers)
        finite = [v for v in rep.err_gptq.values() if math.isfinite(v)]
        if finite:
            r_rtn = sum(v for v in rep.err_rtn.values() if math.isfinite(v)) / len(finite)
            bar.set_postfix(err=f"{r_rtn:.3g}->{sum(finite) / len(finite):.3g}")
        log.info("block %d: mean relative output error %s", idx, rep.err_gptq)
    return loop.reports, loop.layers


def _with_scales(grid: Grid, scales: torch.Tensor) -> Grid:
    if isinstance(grid, PoTGrid):
        return PoTGrid(grid.cfg, scales, grid.k)
    assert isinstance(grid, IntGrid)
    return IntGrid(grid.cfg, scales, grid.zeros, grid.k)


__all__ = ["gptq_model", "gptq_quantize", "gptq_reference", "make_grid", "pot_round_nearest", "PoTGrid", "IntGrid",
           "FrozenCodeLinear", "GPTQBlockReport", "relative_output_error", "OutputError", "gptq_factor", "fit_scales",
           "gptq_with_scale_fits", "DEFAULT_SCALE_FITS",
           "DEFAULT_REFINE_EPOCHS", "DEFAULT_REFINE_LR", "DEFAULT_REFINE_BATCH"]

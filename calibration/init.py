"""PoTPTQ step 1: data-free scale initialisation by grid search, one scale per group.

For each group W_g the start point is ``s0 = max|W_g| / 2^(qmax-1)``; the search tries
``S = b · s0`` for ``b ∈ {0.01, 0.02, …, 2.00}`` and keeps the ``S`` with the smallest
``‖W_g − W̃_g(S)‖²``. With this ``s0`` the round-to-nearest scale ``max / 2^qmax`` is the
candidate ``b = 0.5`` exactly (a power-of-two factor), so step 1 is never worse than RTN.
(Readers of the paper disagree on ``s0``; the alternative ``max / (2^qmax − 1)`` only shifts
the grid, and ``S_OVER_MAX`` is the one place to change it.)

``W̃(S)`` is the exact stored format: ``S`` made storable by :func:`clamp_scales` (stored as the
fp16 top level ``S·2^qmax``), ``E`` from :func:`exponent_codes` against that value, so the error
that is minimised is the error the packed layer will have.
"""
from __future__ import annotations

import torch

from potkernels.format.common import check_weight, grouped
from potkernels.format.config import PoTConfig
from potkernels.format.pot import clamp_scales

N_CANDIDATES = 200  # b = 0.01 · i, i = 1 … 200
TEMP_BYTES = 256 * 2**20  # bound on the per-chunk temporaries


def s0_scales(w: torch.Tensor, cfg: PoTConfig) -> torch.Tensor:
    """Start scale ``s0 = max|W_g| / 2^(qmax-1)`` (float32 ``[N, n_groups]``, padding is zero)."""
    g, _ = cfg.groups_in(w.shape[1])
    return grouped(w.float().abs(), g).amax(dim=-1) / 2.0 ** (cfg.qmax - 1)


def candidates(device: torch.device | str | None = None) -> torch.Tensor:
    """The search grid ``b``: float32 ``[200]`` = 0.01 … 2.00 (0.5 exactly representable)."""
    return torch.arange(1, N_CANDIDATES + 1, device=device, dtype=torch.float32) / 100


def group_errors(w: torch.Tensor, s: torch.Tensor, cfg: PoTConfig,
                 col_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Squared PoT error of every group under every candidate scale, without materialising W̃.

    Sort each group's magnitudes once (carrying each column's weight ``h`` along). For a scale
    S, rounding in the log domain puts |w| in bin ``e`` exactly when ``S·2^(e-½) ≤ |w| < S·2^(e+½)``
    (bins 0 and qmax open-ended), so one ``searchsorted`` gives the cut positions
    ``c_e = #{|w| < S·2^(e+½)}``, e < qmax. With prefix sums over the sorted order,
    ``H[i] = Σ h`` and ``P[i] = Σ h·|w|`` of the ``i`` smallest, and the levels ``l_e = S·2^e``, the
    error ``Σ_e Σ_{bin e} h·(|w| − l_e)²`` telescopes (``l_{e+1} − l_e = l_e``, ``l_{e+1}² − l_e² = 3·l_e²``) to

        Σh|w|² − 2·(l_qmax·P[G] − Σ_e l_e·P[c_e]) + (l_qmax²·H[G] − 3·Σ_e l_e²·H[c_e]),

    i.e. ``qmax`` binary searches per candidate instead of ``G`` exponentials. The fp64 edges are
    within 2^−52 of ``S·2^(e+½)``, closer than any fp32 ``|w|`` can come to it (see
    :func:`exponent_codes`), so the bins are the ones the format stores. S = 0 puts everything in
    bin 0 with level 0: the error is Σh|w|² (the group decodes to zeros).

    Args:
        w: ``[R, K]`` weight rows.
        s: ``[R, n_groups, C]`` candidate level scales, already storable (:func:`clamp_scales`).
        col_weights: optional ``[K]`` non-negative weight per input column (e.g. the mean of
            x² over calibration inputs, which makes the error the expected output error of a
            diagonal input covariance); default 1 (plain weight-space least squares).
    Returns float64 ``[R, n_groups, C]``: Σ over the group's real columns of ``h·(w − W̃(s))²``.
    """
    r, k = w.shape
    g, ng = cfg.groups_in(k)
    c = s.shape[-1]
    q = cfg.qmax
    a, order = grouped(w.float().abs(), g).sort(dim=-1)  # [R, ng, G] ascending
    a = a.double()
    # Column weights, zero on the padding of a partial last group (it must not count).
    h = torch.ones(k, device=w.device) if col_weights is None else col_weights.to(w.device).float()
    h = grouped(h.expand(r, k), g).double().gather(-1, order)  # [R, ng, G], sorted like a
    hp = torch.cat([a.new_zeros(r, ng, 1), h.cumsum(-1)], -1)  # H
    p1 = torch.cat([a.new_zeros(r, ng, 1), (h * a).cumsum(-1)], -1)  # P
    sum2 = (h * a.square()).sum(-1, keepdim=True)  # [R, ng, 1]
    pow2 = 2.0 ** torch.arange(q, device=w.device, dtype=torch.float64)  # 2^e, e < qmax
    s64 = s.double()
    edges = (s64.unsqueeze(-1) * (pow2 * 2**0.5)).view(r, ng, c * q)
    cuts = torch.searchsorted(a.contiguous(), edges)  # [R, ng, C·q]: c_e
    p1_at = p1.gather(-1, cuts).view(r, ng, c, q)
    h_at = hp.gather(-1, cuts).view(r, ng, c, q)
    top = s64 * 2.0**q  # l_qmax
    linear = top * p1[..., -1:] - s64 * (p1_at @ pow2)
    square = top.square() * hp[..., -1:] - 3 * s64.square() * (h_at @ pow2.square())
    return (sum2 - 2 * linear + square).clamp_min(0)


@torch.no_grad()
def init_scales(w: torch.Tensor, cfg: PoTConfig, rows_per_chunk: int | None = None,
                col_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Step-1 level scales for a weight ``[N, K]``: float32 ``[N, n_groups]``, storable (:func:`clamp_scales`).

    ``col_weights`` (float ``[K]``, optional): weight each input column's squared error, e.g. by
    the mean x² of that input channel on calibration data (the activation-weighted variant;
    see :func:`group_errors`). Without it the search is the paper's data-free least squares.

    Vectorised over rows, groups and the 200 candidates at once (see :func:`group_errors`);
    rows are processed in chunks so the temporaries stay below ``TEMP_BYTES`` (≈256 MB).
    """
    check_weight(w)
    if not isinstance(cfg, PoTConfig):
        raise TypeError(f"init_scales searches PoT scales and needs a PoTConfig, got {type(cfg).__name__}")
    n, k = w.shape
    g, ng = cfg.groups_in(k)
    if col_weights is not None and (tuple(col_weights.shape) != (k,) or bool((col_weights < 0).any())
                                    or not bool(torch.isfinite(col_weights).all())):
        raise ValueError(f"col_weights must be finite, non-negative, of shape ({k},); got {tuple(col_weights.shape)}")
    b = candidates(w.device)
    if rows_per_chunk is None:
        # ~6 live 8-byte temporaries of [rows, ng, C, qmax]
        rows_per_chunk = max(1, TEMP_BYTES // (6 * 8 * ng * N_CANDIDATES * cfg.qmax))
    s0 = s0_scales(w, cfg)  # [N, ng]
    out = torch.empty(n, ng, dtype=torch.float32, device=w.device)
    for r in range(0, n, rows_per_chunk):
        rows = slice(r, min(n, r + rows_per_chunk))
        s = clamp_scales(s0[rows, :, None] * b, cfg.bits)  # [R, ng, C]
        err = group_errors(w[rows], s, cfg, col_weights)
        # argmin takes the first minimum: ties go to the smallest b.
        out[rows] = s.gather(-1, err.argmin(dim=-1, keepdim=True)).squeeze(-1)
    return out

"""Split-K reduction shared by the split-K regimes (``gemv``, ``small_batch``): fp32 partials
``[n_split, M, N]`` added in a fixed order (deterministic), either by the last program of each output
tile inside the matmul launch (:func:`splitk_finish`, default) or by a second launch
(:func:`splitk_reduce_kernel`, ``reduce: "kernel"`` configs, safe on concurrent streams)."""
import triton
import triton.language as tl


@triton.jit
def splitk_finish(part_ptr, cnt_ptr, b_ptr, y_ptr, tile, n_split, MN, offs, mask, offs_col,
                  HAS_BIAS: tl.constexpr, CHUNK: tl.constexpr, PER_SPLIT: tl.constexpr = False):
    """Single-launch split-K: after storing its fp32 partial, each program bumps its output tile's
    counter; the last one to arrive adds the ``n_split`` partials, ``CHUNK`` splits per load (all
    in flight at once: the tail costs one cache round trip per chunk, not per split), chunks in
    split order and, inside a chunk, a fixed tree (one ``[CHUNK, ...]`` load) or, with ``PER_SPLIT``, one
    load per split in the tile's own layout added in split order (an MMA accumulator's layout: triton 3.6
    would spread a ``[CHUNK, ...]`` tile across lanes and add it with shuffles) — deterministic; adds the
    bias, casts, stores, and resets the counter for the next launch. ``offs``/``mask``: the tile's flat output offsets (any rank)."""
    tl.debug_barrier()  # every thread's partial store is issued before the release below
    arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
    if arrived == n_split - 1:
        total = tl.zeros(offs.shape, dtype=tl.float32)
        for s0 in range(0, n_split, CHUNK):
            if PER_SPLIT:  # CHUNK independent loads, all issued before the adds
                for c in tl.static_range(CHUNK):
                    total += tl.load(part_ptr + (s0 + c) * MN + offs, mask=mask & (s0 + c < n_split), other=0.0,
                                     cache_modifier=".cg")
            else:
                sp = tl.arange(0, CHUNK)
                if len(offs.shape) == 1:
                    pp = part_ptr + (s0 + sp)[:, None] * MN + offs[None, :]
                    pm = ((s0 + sp) < n_split)[:, None] & mask[None, :]
                else:
                    pp = part_ptr + (s0 + sp)[:, None, None] * MN + offs[None, :, :]
                    pm = ((s0 + sp) < n_split)[:, None, None] & mask[None, :, :]
                total += tl.sum(tl.load(pp, mask=pm, other=0.0, cache_modifier=".cg"), axis=0)
        if HAS_BIAS:
            total += tl.load(b_ptr + offs_col, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(cnt_ptr + tile, 0)


@triton.jit
def splitk_reduce_kernel(part_ptr, b_ptr, y_ptr, MN, N, n_split,
                         HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """``y[i] = Σ_s part[s, i] (+ bias[i % N])`` over a flat ``[n_split, MN]`` fp32 buffer, in order."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, n_split):
        acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)

"""M = 1 fused decode + matvec (decode regime), fp32 accumulation, split-K.

Each program owns ``BLOCK_N`` output columns and a K-chunk of whole 32-k *rows* (one sign word
each). It reads every packed word exactly once as a ``[BLOCK_R, BLOCK_N]`` tile (coalesced
along N) and walks the 32 codes of each word with a static loop: code j of row r is weight
k = 32·r + j, decoded straight to an fp32 value and FMA'd with x[k] — no layout shuffles, no
tensor cores (M = 1 has nothing to reuse), no per-weight multiply for PoT:

* PoT: fp32 bits = bits(S) + (E << 23) | sign << 31 — exact S·2^E (S normal, no overflow);
* int: ``(q | 0x4B000000)`` is the fp32 2^23 + q, minus (2^23 + z), times s.

With ``SPLIT`` the per-chunk column sums go to an fp32 ``[n_split, N]`` buffer; the last program
of each column block adds them in split order (:func:`splitk_finish`, one launch, deterministic)
or, with ``FUSED_REDUCE=False``, :func:`splitk_reduce_kernel` does it in a second launch.
"""
import triton
import triton.language as tl

from .decode import int_slice_code, load_row_words, pot_slice_bits


@triton.jit
def rows_dot(acc, x_ptr, q_ptr, sg_ptr, sc_ptr, z_ptr, offs_r, mask_r, offs_n, mask_n, N, K, KP, G, flip,
             IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr, IS_BF16: tl.constexpr,
             EVEN_K: tl.constexpr):
    """``acc[r, n] += Σ_j x[32 r + j] · W[n, 32 r + j]`` for rows ``offs_r [BLOCK_R]`` of 32 k.

    Each packed word is loaded once and its codes walked by a static loop; every field is
    shifted straight to its place in the fp32 bit pattern (one immediate shift + one mask; the
    two 1-bit planes of 4-bit PoT share one shift, see ``decode.pair_planes``). The group scale
    is constant along a row of 32 k, so the int path sums x·(q − z) over the row and multiplies
    by s once; PoT needs no multiply at all. ``flip`` is XORed into the code words (0 here; the
    decode benchmark varies it so the decode cannot be hoisted). ``EVEN_K``: K % 32 == 0.
    """
    EPW0: tl.constexpr = 32 // W0
    s, sbz, t_a, t_b, t_c = load_row_words(q_ptr, sg_ptr, sc_ptr, z_ptr, offs_r, mask_r, offs_n, mask_n,
                                           N, KP, G, IS_POT, W0, W1, 31, 23, IS_BF16)
    if IS_POT:
        t_a, t_b, t_c = t_a ^ flip, t_b ^ flip, t_c ^ flip
    else:
        t_a = t_a ^ flip
        zf = sbz.to(tl.float32)
        part = tl.zeros(acc.shape, dtype=tl.float32)
        xsum = tl.zeros(offs_r.shape, dtype=tl.float32)
    m2 = mask_r[:, None] & mask_n[None, :]
    for u in tl.static_range(W0):
        w0 = tl.load(q_ptr + (offs_r[:, None] * W0 + u) * N + offs_n[None, :], mask=m2, other=0) ^ flip
        w0 = w0.to(tl.uint32, bitcast=True)
        for jj in tl.static_range(EPW0):
            j = u * EPW0 + jj  # k = 32 r + j (a compile-time constant)
            kx = offs_r * 32 + j
            if EVEN_K:
                xk = tl.load(x_ptr + kx, mask=mask_r, other=0.0).to(tl.float32)
            else:
                xk = tl.load(x_ptr + kx, mask=kx < K, other=0.0).to(tl.float32)
            if IS_POT:
                bits = pot_slice_bits(w0, t_a, t_b, t_c, sbz, jj, j, W0, W1, 31, 23)
                acc += xk[:, None] * bits.to(tl.float32, bitcast=True)
            else:
                q = int_slice_code(w0, t_a, jj, j, W0, W1)
                qf = (q | 0x4B000000).to(tl.float32, bitcast=True)  # 2^23 + q, exact
                part += xk[:, None] * (qf - 8388608.0)
                xsum += xk
    if not IS_POT:
        # Σ_j x_j (q_j − z) s = s (Σ_j x_j q_j − z Σ_j x_j), all in fp32.
        acc += s.to(tl.float32) * (part - zf * xsum[:, None])
    return acc


@triton.jit
def splitk_finish(part_ptr, cnt_ptr, b_ptr, y_ptr, tile, n_split, MN, offs, mask, offs_col,
                  HAS_BIAS: tl.constexpr):
    """Single-launch split-K: after storing its fp32 partial, each program bumps its output tile's
    counter; the last one to arrive adds the ``n_split`` partials in split order (deterministic),
    adds the bias, casts, stores, and resets the counter for the next launch."""
    tl.debug_barrier()  # every thread's partial store is issued before the release below
    arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
    if arrived == n_split - 1:
        total = tl.zeros(offs.shape, dtype=tl.float32)
        for s in range(0, n_split):
            total += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0, cache_modifier=".cg")
        if HAS_BIAS:
            total += tl.load(b_ptr + offs_col, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(cnt_ptr + tile, 0)


@triton.jit
def gemv_kernel(x_ptr, q_ptr, sg_ptr, sc_ptr, z_ptr, b_ptr, y_ptr, part_ptr, cnt_ptr,
                N, K, KP, G, rows_per_split, n_split,
                IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr, IS_BF16: tl.constexpr,
                HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, FUSED_REDUCE: tl.constexpr, EVEN_K: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    n_rows = KP // 32
    r_lo = pid_k * rows_per_split
    r_hi = tl.minimum(r_lo + rows_per_split, n_rows)
    acc = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        acc = rows_dot(acc, x_ptr, q_ptr, sg_ptr, sc_ptr, z_ptr, offs_r, offs_r < r_hi, offs_n, mask_n,
                       N, K, KP, G, 0, IS_POT, W0, W1, IS_BF16, EVEN_K)
    y = tl.sum(acc, axis=0)
    if SPLIT:
        tl.store(part_ptr + pid_k * N + offs_n, y, mask=mask_n)
        if FUSED_REDUCE:
            splitk_finish(part_ptr, cnt_ptr, b_ptr, y_ptr, pid_n, n_split, N, offs_n, mask_n, offs_n, HAS_BIAS)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


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

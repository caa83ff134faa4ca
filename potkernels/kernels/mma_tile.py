"""@triton.jit tile decoder for the tensor-core regimes (``small_batch`` swap-AB and ``gemm``).

A tensor-core kernel needs a whole decoded weight tile per K step. :func:`tile_nk` returns
``W[offs_n, k0 : k0 + BLOCK_K]`` as fp16/bf16 ``[BN, BLOCK_K]`` — the A operand of the swap-AB
product ``yᵀ = W · xᵀ``, and (``tl.trans``) the B operand of ``y = x · Wᵀ``.

Register layout is what decides the cost. Every packed word of the tile is loaded once, by the
thread that decodes it; that thread expands all codes of its 32-k row with **compile-time shift
amounts** and assembles them with a ``tl.join`` tree (:func:`_row`), so the 32 weights of a row
end up consecutive in that thread's registers, in natural k order (``tl.reshape`` is then free
and the tile reaches shared memory, when the MMA needs it there, with 128-bit stores — one store
per decoded weight per K step). Expanding by broadcast shifts instead spreads a word's codes over
16 threads, one variable shift and one 16-bit shared store per weight (2× the instructions).

``SCALE_FREE``: the tile holds the scale-free values — PoT ``±2^E`` (the code OR-ed into a
constant exponent field, no add), int ``q − z`` — both exact in fp16 and bf16; the caller
multiplies the fp32 MMA result of the tile by the group scale (:func:`tile_scale`), one multiply
per output per K step instead of one add per weight. It needs the K tile inside one group
(``G % BLOCK_K == 0`` or per-channel). Otherwise the scale is folded into each weight, the
bit-exact decode of ``decode.pot_decode16`` / ``decode.int_decode16``.

Rows ``k ≥ K`` decode to finite values (zero codes or masked words): callers mask x there.
"""
import triton
import triton.language as tl

from .decode import int_decode16, int_zero16, scale_bits16


@triton.jit
def _pick(w0, w1, w2, w3, w4, w5, w6, w7, U: tl.constexpr):
    """The U-th plane-0 word of a row (U a compile-time constant)."""
    if U == 0:
        w = w0
    elif U == 1:
        w = w1
    elif U == 2:
        w = w2
    elif U == 3:
        w = w3
    elif U == 4:
        w = w4
    elif U == 5:
        w = w5
    elif U == 6:
        w = w6
    else:
        w = w7
    return w


@triton.jit
def _decode(c, sgn, sb, zc, s, IS_POT: tl.constexpr, IS_BF16: tl.constexpr, SCALE_FREE: tl.constexpr):
    """Unsigned codes (+ PoT sign bits) → fp16/bf16 weights, the decode of the module doc."""
    MANT: tl.constexpr = 7 if IS_BF16 else 10
    if IS_POT:
        # scale-free: ``sb`` is the exponent bias (±2^E); scaled: the scale's bits (±S·2^E)
        bits = (sb + (c << MANT)) | (sgn << 15)
        if IS_BF16:
            w = bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
        else:
            w = bits.to(tl.int16).to(tl.float16, bitcast=True)
    else:
        if SCALE_FREE:
            if IS_BF16:
                w = (c - zc).to(tl.float32).to(tl.bfloat16)  # |q − z| ≤ 255: exact in bf16
            else:
                w = (c | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - zc  # (1024 + q) − (1024 + z)
        else:
            w = int_decode16(c, zc, s, IS_BF16)
    return w


@triton.jit
def _leaf(w0, w1, w2, w3, w4, w5, w6, w7, hi, sw, sb, zc, s, J: tl.constexpr,
          IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr, IS_BF16: tl.constexpr,
          SCALE_FREE: tl.constexpr):
    """Weight J (0…31) of every row ``[BN, R]``: every shift is an immediate."""
    EPW: tl.constexpr = 32 // W0
    c = (_pick(w0, w1, w2, w3, w4, w5, w6, w7, J // EPW) >> ((J % EPW) * W0)) & ((1 << W0) - 1)
    if W1 > 0:
        c |= ((hi >> J) & 1) << W0
    return _decode(c, (sw >> J) & 1, sb, zc, s, IS_POT, IS_BF16, SCALE_FREE)


@triton.jit
def _row(w0, w1, w2, w3, w4, w5, w6, w7, hi, sw, sb, zc, s,
         START: tl.constexpr, STEP: tl.constexpr, COUNT: tl.constexpr,
         IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr, IS_BF16: tl.constexpr,
         SCALE_FREE: tl.constexpr):
    """Weights START, START + STEP, … (COUNT of them) of every row, stacked on COUNT trailing
    in-thread axes of size 2 in natural order: ``join(evens, odds)`` recursively."""
    if COUNT == 1:
        r = _leaf(w0, w1, w2, w3, w4, w5, w6, w7, hi, sw, sb, zc, s, START, IS_POT, W0, W1, IS_BF16, SCALE_FREE)
    else:
        r = tl.join(_row(w0, w1, w2, w3, w4, w5, w6, w7, hi, sw, sb, zc, s, START, 2 * STEP, COUNT // 2,
                         IS_POT, W0, W1, IS_BF16, SCALE_FREE),
                    _row(w0, w1, w2, w3, w4, w5, w6, w7, hi, sw, sb, zc, s, START + STEP, 2 * STEP, COUNT // 2,
                         IS_POT, W0, W1, IS_BF16, SCALE_FREE))
    return r


@triton.jit
def _plane_word(q_ptr, offs_r, offs_n, mask_nr, N, U: tl.constexpr, W0: tl.constexpr):
    """Plane-0 word U of rows ``offs_r`` ``[BN, R]`` (word 0 again when U ≥ W0: never used)."""
    u: tl.constexpr = U if U < W0 else 0
    return tl.load(q_ptr + (offs_r[None, :] * W0 + u) * N + offs_n[:, None], mask=mask_nr, other=0)


@triton.jit
def tile_nk(q_ptr, sg_ptr, sc_ptr, z_ptr, k0, offs_n, mask_n, N, KP, G,
            IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr, IS_BF16: tl.constexpr,
            SCALE_FREE: tl.constexpr, JOIN_TREE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Decoded ``W[offs_n, k0 : k0 + BLOCK_K]`` as fp16/bf16 ``[BN, BLOCK_K]`` (see module doc).

    ``JOIN_TREE``: the in-thread expansion of the module doc (compiled kernels). Otherwise codes
    are expanded by broadcast shifts ``[BN, R, W0, 32 // W0]`` — the same values through the same
    :func:`_decode`, in a dozen tensor ops instead of ~130 nested calls, which is what the
    interpreter pays for (a test checks both give identical bits)."""
    R: tl.constexpr = BLOCK_K // 32
    BN: tl.constexpr = offs_n.shape[0]
    MANT: tl.constexpr = 7 if IS_BF16 else 10
    offs_r = k0 // 32 + tl.arange(0, R)
    mask_nr = mask_n[:, None] & (offs_r < KP // 32)[None, :]
    w0 = _plane_word(q_ptr, offs_r, offs_n, mask_nr, N, 0, W0)
    w1 = w0
    w2 = w0
    w3 = w0
    w4 = w0
    w5 = w0
    w6 = w0
    w7 = w0
    if W0 >= 2:
        w1 = _plane_word(q_ptr, offs_r, offs_n, mask_nr, N, 1, W0)
    if W0 >= 4:
        w2 = _plane_word(q_ptr, offs_r, offs_n, mask_nr, N, 2, W0)
        w3 = _plane_word(q_ptr, offs_r, offs_n, mask_nr, N, 3, W0)
    if W0 >= 8:
        w4 = _plane_word(q_ptr, offs_r, offs_n, mask_nr, N, 4, W0)
        w5 = _plane_word(q_ptr, offs_r, offs_n, mask_nr, N, 5, W0)
        w6 = _plane_word(q_ptr, offs_r, offs_n, mask_nr, N, 6, W0)
        w7 = _plane_word(q_ptr, offs_r, offs_n, mask_nr, N, 7, W0)
    row_ptrs = offs_r[None, :] * N + offs_n[:, None]
    hi = w0
    if W1 > 0:
        hi = tl.load(q_ptr + (KP * W0 // 32) * N + row_ptrs, mask=mask_nr, other=0)
    sw = w0  # placeholders for the operands a code does not use (never read)
    sb = w0
    zc = w0
    s = w0
    if IS_POT:
        sw = tl.load(sg_ptr + row_ptrs, mask=mask_nr, other=0)
        if SCALE_FREE:
            sb = tl.zeros_like(w0) + ((127 if IS_BF16 else 15) << MANT)  # the exponent bias: ±2^E
        else:
            sc = tl.load(sc_ptr + ((offs_r * 32) // G)[None, :] * N + offs_n[:, None], mask=mask_nr, other=0.0)
            sb = scale_bits16(sc, IS_BF16)
    else:
        if SCALE_FREE:
            z = tl.load(z_ptr + (k0 // G) * N + offs_n, mask=mask_n, other=0).to(tl.int32)[:, None]
            if IS_BF16:
                zc = z + tl.zeros_like(w0)
            else:
                zc = (z + 1024).to(tl.float16) + tl.zeros_like(w0).to(tl.float16)
        else:
            s_ptrs = ((offs_r * 32) // G)[None, :] * N + offs_n[:, None]
            s = tl.load(sc_ptr + s_ptrs, mask=mask_nr, other=0.0)
            zc = int_zero16(tl.load(z_ptr + s_ptrs, mask=mask_nr, other=0).to(tl.int32), IS_BF16)
    if JOIN_TREE:
        w = _row(w0, w1, w2, w3, w4, w5, w6, w7, hi, sw, sb, zc, s, 0, 1, 32, IS_POT, W0, W1, IS_BF16, SCALE_FREE)
    else:
        EPW: tl.constexpr = 32 // W0
        u = tl.arange(0, W0)
        j = tl.arange(0, EPW)
        words = tl.load(q_ptr + (offs_r[None, :, None] * W0 + u[None, None, :]) * N + offs_n[:, None, None],
                        mask=mask_nr[:, :, None], other=0)
        c = (words[:, :, :, None] >> (j * W0)[None, None, None, :]) & ((1 << W0) - 1)  # [BN, R, W0, EPW]
        kk = (u[:, None] * EPW + j[None, :])[None, None, :, :]  # k within the row of 32
        if W1 > 0:
            c |= ((hi[:, :, None, None] >> kk) & 1) << W0
        w = _decode(c, (sw[:, :, None, None] >> kk) & 1, sb[:, :, None, None], zc[:, :, None, None],
                    s[:, :, None, None], IS_POT, IS_BF16, SCALE_FREE)
    return tl.reshape(w, [BN, BLOCK_K])


@triton.jit
def tile_scale(sc_ptr, k0, offs_n, mask_n, N, G):
    """fp32 group scales ``[BN]`` of the K tile starting at ``k0`` (one group per tile)."""
    return tl.load(sc_ptr + (k0 // G) * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)

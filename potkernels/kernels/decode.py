"""@triton.jit decode helpers shared by every kernel (dequant, GEMV, small batch, GEMM, bench).

Layout recap (see ``format/packing.py``): a code of ``CODE_BITS`` bits is split into a widest
plane of ``W0 ∈ {1, 2, 4, 8}`` bits and, for 3-bit codes, a 1-bit plane (``W1 = 1``). A plane
of width w packs ``epw = 32 // w`` codes of one column per int32 word, contiguously along K;
words are stored ``[rows, N]`` so a tile of words is a coalesced load along N. Plane 0 starts
at row 0, the 1-bit plane at row ``KP * W0 // 32`` (KP = K padded to 32).

Two ways to get a ``[BLOCK_K, BLOCK_N]`` tile of codes:

* ``codes_dup``: gather words at rows ``k // epw`` for every k (the same word is read
  ``epw`` times, from L1) — simple, any BLOCK_K multiple of 32.
* ``codes_expand``: read each word exactly once as ``[R, W0, BN]`` (R rows of 32 k), expand in
  registers to ``[R, W0, epw, BN]`` by broadcast shifts and reshape to ``[R*32, BN]``
  (k = 32·r + epw·u + j keeps the natural order).

Decoders are integer-only for PoT (add ``E << mantissa_bits`` into the scale's bits, OR the
sign) and a bit-exact ``(q − z)·s`` for int (see ``int_decode16``).
"""
import os

import triton
import triton.language as tl

# The interpreter's fp32 → bf16 cast truncates (and its "rtne" mode mishandles carries), so
# there bf16 rounding is done by integer arithmetic; compiled kernels use the hardware RNE cast.
INTERPRETER = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))


# ------------------------------------------------------------------ code extraction
@triton.jit
def _plane_dup(ptr, row0, offs_k, offs_n, N, mask, WIDTH: tl.constexpr):
    """Codes of one plane for k offsets ``offs_k [BK]`` × columns ``offs_n [BN]`` → int32 [BK, BN]."""
    EPW: tl.constexpr = 32 // WIDTH
    rows = row0 + offs_k // EPW
    words = tl.load(ptr + rows[:, None] * N + offs_n[None, :], mask=mask, other=0)
    return (words >> ((offs_k % EPW) * WIDTH)[:, None]) & ((1 << WIDTH) - 1)


@triton.jit
def codes_dup(ptr, offs_k, offs_n, N, KP, mask, W0: tl.constexpr, W1: tl.constexpr):
    """Unsigned codes ``[BK, BN]`` int32 (planes W0 [+ a 1-bit plane W1]) by gathered loads."""
    c = _plane_dup(ptr, 0, offs_k, offs_n, N, mask, W0)
    if W1 > 0:
        c |= _plane_dup(ptr, KP * W0 // 32, offs_k, offs_n, N, mask, 1) << W0
    return c


@triton.jit
def _bit_expand(word_rows, W0: tl.constexpr):
    """1-bit plane words ``[R, BN]`` → bits ``[R, W0, 32 // W0, BN]`` in the same k order."""
    EPW: tl.constexpr = 32 // W0
    u = tl.arange(0, W0)
    j = tl.arange(0, EPW)
    kk = u[:, None] * EPW + j[None, :]  # [W0, EPW]: k within the 32-k row
    return (word_rows[:, None, None, :] >> kk[None, :, :, None]) & 1


@triton.jit
def codes_expand(ptr, offs_r, offs_n, N, KP, mask_rn, W0: tl.constexpr, W1: tl.constexpr):
    """Unsigned codes ``[R, W0, 32 // W0, BN]`` int32 for rows ``offs_r [R]`` of 32 k each.

    Every word is loaded once (``[R, W0, BN]``, coalesced along N) and expanded in registers.
    ``mask_rn [R, BN]``. Reshape the result to ``[R * 32, BN]`` for k = 32·r + (index).
    """
    EPW: tl.constexpr = 32 // W0
    u = tl.arange(0, W0)
    j = tl.arange(0, EPW)
    ptrs = ptr + (offs_r[:, None, None] * W0 + u[None, :, None]) * N + offs_n[None, None, :]
    words = tl.load(ptrs, mask=mask_rn[:, None, :], other=0)  # [R, W0, BN]
    c = (words[:, :, None, :] >> (j * W0)[None, None, :, None]) & ((1 << W0) - 1)
    if W1 > 0:
        w1 = tl.load(ptr + (KP * W0 // 32 + offs_r)[:, None] * N + offs_n[None, :], mask=mask_rn, other=0)
        c |= _bit_expand(w1, W0) << W0
    return c


# ------------------------------------------------------------------ decoders
@triton.jit
def to_bf16_rne(x):
    """fp32 → bf16, round to nearest even (finite inputs), identical on GPU and interpreter."""
    if INTERPRETER:
        b = x.to(tl.int32, bitcast=True)
        r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        y = r.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        y = x.to(tl.bfloat16, fp_downcast_rounding="rtne")
    return y


@triton.jit
def scale_bits16(s, IS_BF16: tl.constexpr):
    """fp16 scales → int32 holding the 16-bit pattern of S in the decode dtype (bf16: RNE first)."""
    if IS_BF16:
        b = to_bf16_rne(s.to(tl.float32)).to(tl.int16, bitcast=True)
    else:
        b = s.to(tl.int16, bitcast=True)
    return b.to(tl.int32) & 0xFFFF


@triton.jit
def pot_decode16(e, sgn, sbits, IS_BF16: tl.constexpr):
    """(-1)^sgn · S · 2^e as fp16/bf16 by integer add into the exponent field — no multiply.

    ``sbits`` from :func:`scale_bits16`; the scale range guarantees no exponent overflow.
    """
    MANT: tl.constexpr = 7 if IS_BF16 else 10
    bits = (sbits + (e << MANT)) | (sgn << 15)
    if IS_BF16:
        w = bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        w = bits.to(tl.int16).to(tl.float16, bitcast=True)
    return w


@triton.jit
def int_zero16(z, IS_BF16: tl.constexpr):
    """Zero points (int) → the constant subtracted by :func:`int_decode16` (once per scale tile)."""
    if IS_BF16:
        zc = z.to(tl.float32) + 8388608.0  # 2^23 + z, exact in fp32
    else:
        zc = (z + 1024).to(tl.float16)  # 1024 + z, exact in fp16
    return zc


@triton.jit
def int_decode16(q, zc, s, IS_BF16: tl.constexpr):
    """(q − z)·s rounded once to fp16/bf16, bit-exact with ``format.uniform.decode_int``.

    fp16: ``q | 0x6400`` is the fp16 number 1024 + q; minus ``zc = 1024 + z`` is exactly q − z
    and one fp16 multiply by the fp16 s rounds the exact product once. bf16: the same trick at
    2^23 in fp32 gives q − z exactly, the fp32 product with s is exact (≤ 9 + 11 significant
    bits), then one RNE rounding to bf16. ``zc`` from :func:`int_zero16`.
    """
    if IS_BF16:
        qf = (q | 0x4B000000).to(tl.float32, bitcast=True) - zc
        w = to_bf16_rne(qf * s.to(tl.float32))
    else:
        qh = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        w = (qh - zc) * s
    return w


@triton.jit
def scale_bits32(s, IS_BF16: tl.constexpr):
    """fp16 scales → int32 fp32 bit pattern of S (bf16 activations: S rounded to bf16 first)."""
    if IS_BF16:
        b = to_bf16_rne(s.to(tl.float32)).to(tl.int16, bitcast=True).to(tl.int32) << 16
    else:
        b = s.to(tl.float32).to(tl.int32, bitcast=True)
    return b


@triton.jit
def pot_decode32_bits(e_at23, sgn_at31, sbits32):
    """PoT weight as fp32 from fp32 scale bits: exact S·2^E (S normal, no overflow) with sign."""
    return ((sbits32 + e_at23) | sgn_at31).to(tl.float32, bitcast=True)


@triton.jit
def decode_tile(q_ptr, sg_ptr, sc_ptr, z_ptr, k0, offs_n, mask_n, N, K, KP, G,
                IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr, IS_BF16: tl.constexpr,
                EXPAND: tl.constexpr, SCALE_PER_TILE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Decoded weights ``W^T[k0 : k0 + BLOCK_K, offs_n]`` as fp16/bf16 ``[BLOCK_K, BN]``.

    ``q_ptr`` = qexp (PoT) / qweight (int); ``sg_ptr`` = qsign (PoT only); ``z_ptr`` = zeros
    (int only). Rows k ≥ K decode to finite values (zero codes or masked words): callers mask
    x (or the store) there. ``SCALE_PER_TILE``: the whole K tile lies in one group.
    """
    if EXPAND:
        R: tl.constexpr = BLOCK_K // 32
        offs_r = k0 // 32 + tl.arange(0, R)
        mask_rn = (offs_r < KP // 32)[:, None] & mask_n[None, :]
        c = codes_expand(q_ptr, offs_r, offs_n, N, KP, mask_rn, W0, W1)  # [R, W0, EPW, BN]
        grp = (offs_r * 32) // G
        s_ptrs = grp[:, None] * N + offs_n[None, :]
        s = tl.load(sc_ptr + s_ptrs, mask=mask_rn, other=0.0)[:, None, None, :]
        if IS_POT:
            sw = tl.load(sg_ptr + offs_r[:, None] * N + offs_n[None, :], mask=mask_rn, other=0)
            w = pot_decode16(c, _bit_expand(sw, W0), scale_bits16(s, IS_BF16), IS_BF16)
        else:
            z = tl.load(z_ptr + s_ptrs, mask=mask_rn, other=0).to(tl.int32)[:, None, None, :]
            w = int_decode16(c, int_zero16(z, IS_BF16), s, IS_BF16)
        return tl.reshape(w, [BLOCK_K, w.shape[3]])
    else:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_k < KP)[:, None] & mask_n[None, :]
        c = codes_dup(q_ptr, offs_k, offs_n, N, KP, mask, W0, W1)
        if SCALE_PER_TILE:
            s_ptrs = (k0 // G) * N + offs_n[None, :]
            s_mask = mask_n[None, :]
        else:
            s_ptrs = (offs_k // G)[:, None] * N + offs_n[None, :]
            s_mask = (offs_k < K)[:, None] & mask_n[None, :]  # per-channel: no group past K
        s = tl.load(sc_ptr + s_ptrs, mask=s_mask, other=0.0)
        if IS_POT:
            sgn = _plane_dup(sg_ptr, 0, offs_k, offs_n, N, mask, 1)
            return pot_decode16(c, sgn, scale_bits16(s, IS_BF16), IS_BF16)
        else:
            z = tl.load(z_ptr + s_ptrs, mask=s_mask, other=0).to(tl.int32)
            return int_decode16(c, int_zero16(z, IS_BF16), s, IS_BF16)


# ------------------------------------------------------------------ static-shift decode (one slice per k)
# The kernels below walk the 32 codes of a word with a static loop, so every shift amount is a
# compile-time immediate and every word is read once. A "slice" is the [R, BN] tile of weights
# k = 32·r + j for one j.

@triton.jit
def shift_to(word, SRC: tl.constexpr, DST: tl.constexpr):
    """uint32 ``word`` shifted so bit SRC lands on bit DST (other bits move along, unmasked)."""
    if DST >= SRC:
        return word << (DST - SRC)
    else:
        return word >> (SRC - DST)


@triton.jit
def place(word, SRC: tl.constexpr, DST: tl.constexpr, WIDTH: tl.constexpr):
    """Bits ``[SRC, SRC + WIDTH)`` of a uint32 word moved to ``[DST, DST + WIDTH)``, others zero."""
    return shift_to(word, SRC, DST) & (((1 << WIDTH) - 1) << DST)


@triton.jit
def pair_planes(w1, sw, D: tl.constexpr):
    """Interleave two 1-bit planes (E's top bit ``w1``, the sign ``sw``; uint32) into three words
    where, for every j, E's bit sits D bits below the sign bit — so ONE shift and one mask place
    both (:func:`hi_and_sign`). D = 6 for fp32/bf16 patterns, 3 for fp16. Built once per word."""
    if D == 6:
        t_a = (w1 & 0x303F03F) | ((sw << 6) & 0xC0FC0FC0)  # j in {0-5, 12-17, 24, 25}
        t_b = (w1 & 0xFC0FC0) | ((sw << 6) & 0x3F03F000)  # j in {6-11, 18-23}
        t_c = ((w1 & 0xFC000000) >> 6) | (sw & 0xFC000000)  # j in 26-31: E at j-6, sign at j
    else:
        t_a = (w1 & 0x71C71C7) | ((sw << 3) & 0x38E38E38)  # j with (j // 3) even, j <= 28
        t_b = (w1 & 0x18E38E38) | ((sw << 3) & 0xC71C71C0)  # j with (j // 3) odd, j <= 28
        t_c = ((w1 & 0xE0000000) >> 3) | (sw & 0xE0000000)  # j in 29-31
    return t_a, t_b, t_c


@triton.jit
def hi_and_sign(t_a, t_b, t_c, J: tl.constexpr, D: tl.constexpr, PS: tl.constexpr):
    """E's top bit of code J at bit PS − D and its sign at bit PS, from :func:`pair_planes` words."""
    M: tl.constexpr = (1 << PS) | (1 << (PS - D))
    if J >= 32 - D:
        return shift_to(t_c, J, PS) & M
    elif (J // D) % 2 == 0:
        return shift_to(t_a, J + D, PS) & M
    else:
        return shift_to(t_b, J + D, PS) & M


@triton.jit
def load_row_words(q_ptr, sg_ptr, sc_ptr, z_ptr, offs_r, mask_r, offs_n, mask_n, N, KP, G,
                   IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr, PS: tl.constexpr,
                   MANT: tl.constexpr, IS_BF16: tl.constexpr):
    """Per-row-block operands of the static decoders: (scale, scale bits / zero constant, the
    three paired 1-bit words or the sign word / 1-bit plane). ``PS`` = 31 (fp32 patterns) or 15."""
    m2 = mask_r[:, None] & mask_n[None, :]
    row_ptrs = offs_r[:, None] * N + offs_n[None, :]
    s_ptrs = ((offs_r * 32) // G)[:, None] * N + offs_n[None, :]
    s = tl.load(sc_ptr + s_ptrs, mask=m2, other=0.0)
    if PS == 31:
        sbz = scale_bits32(s, IS_BF16)
    else:
        sbz = scale_bits16(s, IS_BF16)
    sbz = sbz.to(tl.uint32, bitcast=True)
    t_a = sbz
    t_b = sbz
    t_c = sbz
    if IS_POT:
        sw = tl.load(sg_ptr + row_ptrs, mask=m2, other=0).to(tl.uint32, bitcast=True)
        if W1 > 0:
            w1 = tl.load(q_ptr + (KP * W0 // 32) * N + row_ptrs, mask=m2, other=0).to(tl.uint32, bitcast=True)
            t_a, t_b, t_c = pair_planes(w1, sw, PS - MANT - W0)
        else:
            t_a = sw
    else:
        sbz = tl.load(z_ptr + s_ptrs, mask=m2, other=0).to(tl.int32)
        if W1 > 0:
            t_a = tl.load(q_ptr + (KP * W0 // 32) * N + row_ptrs, mask=m2, other=0).to(tl.uint32, bitcast=True)
    return s, sbz, t_a, t_b, t_c


@triton.jit
def pot_slice_bits(w0, t_a, t_b, t_c, sb, JJ: tl.constexpr, J: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr,
                   PS: tl.constexpr, MANT: tl.constexpr):
    """uint32 bit pattern of ±S·2^E for code J (JJ-th in its word ``w0``): S's bits + E << MANT
    + sign << PS, every field moved by one immediate shift and one mask."""
    e = place(w0, JJ * W0, MANT, W0)
    if W1 > 0:
        return sb + e + hi_and_sign(t_a, t_b, t_c, J, PS - MANT - W0, PS)
    else:
        return sb + e + place(t_a, J, PS, 1)  # t_a = the sign word; no carry reaches the sign bit


@triton.jit
def int_slice_code(w0, t_a, JJ: tl.constexpr, J: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr):
    """Unsigned int code J of a row (JJ-th in its word ``w0``; ``t_a`` = the 1-bit plane if any)."""
    q = place(w0, JJ * W0, 0, W0)
    if W1 > 0:
        q |= place(t_a, J, W0, 1)
    return q


@triton.jit
def decode_slice16(w0, s, sbz, t_a, t_b, t_c, JJ: tl.constexpr, J: tl.constexpr,
                   IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr, IS_BF16: tl.constexpr):
    """Weights k = 32·r + J of a row block as fp16/bf16 ``[R, BN]`` (bit-exact with the reference)."""
    MANT: tl.constexpr = 7 if IS_BF16 else 10
    if IS_POT:
        bits = pot_slice_bits(w0, t_a, t_b, t_c, sbz, JJ, J, W0, W1, 15, MANT)
        if IS_BF16:
            w = bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
        else:
            w = bits.to(tl.int16).to(tl.float16, bitcast=True)
    else:
        q = int_slice_code(w0, t_a, JJ, J, W0, W1).to(tl.int32, bitcast=True)
        w = int_decode16(q, int_zero16(sbz, IS_BF16), s, IS_BF16)
    return w


@triton.jit
def dot_rows(acc, x_ptr, stride_xm, offs_m, mask_m, q_ptr, sg_ptr, sc_ptr, z_ptr, offs_r, mask_r,
             offs_n, mask_n, N, K, KP, G, IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr,
             IS_BF16: tl.constexpr):
    """``acc += x[:, rows] @ W^T[rows, offs_n]`` for R = len(offs_r) ≥ 16 rows of 32 k, as 32
    ``tl.dot`` of K = R each: slice j pairs x columns {32·r + j} with the decoded weights of those
    k (a permutation of the sum over k). Every word is read once, shifts are immediates."""
    EPW0: tl.constexpr = 32 // W0
    MANT: tl.constexpr = 7 if IS_BF16 else 10
    s, sbz, t_a, t_b, t_c = load_row_words(q_ptr, sg_ptr, sc_ptr, z_ptr, offs_r, mask_r, offs_n, mask_n,
                                           N, KP, G, IS_POT, W0, W1, 15, MANT, IS_BF16)
    m2 = mask_r[:, None] & mask_n[None, :]
    for u in tl.static_range(W0):
        w0 = tl.load(q_ptr + (offs_r[:, None] * W0 + u) * N + offs_n[None, :], mask=m2, other=0)
        w0 = w0.to(tl.uint32, bitcast=True)
        for jj in tl.static_range(EPW0):
            j = u * EPW0 + jj
            kx = offs_r * 32 + j
            xj = tl.load(x_ptr + offs_m[:, None] * stride_xm + kx[None, :],
                         mask=mask_m[:, None] & (kx < K)[None, :], other=0.0)
            w = decode_slice16(w0, s, sbz, t_a, t_b, t_c, jj, j, IS_POT, W0, W1, IS_BF16)
            acc = tl.dot(xj, w, acc)
    return acc


@triton.jit
def dot_k_range(acc, k_lo, k_hi, x_ptr, stride_xm, offs_m, mask_m, q_ptr, sg_ptr, sc_ptr, z_ptr,
                offs_n, mask_n, N, K, KP, G, IS_POT: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr,
                IS_BF16: tl.constexpr, LOADER: tl.constexpr, SCALE_PER_TILE: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """``acc += x[offs_m, k_lo:k_hi] @ W^T[k_lo:k_hi, offs_n]`` in steps of ``BLOCK_K`` (the
    K loop of the small-batch and GEMM kernels). ``LOADER`` 2: :func:`dot_rows` (each word read
    once, 32 dots per step); 0 / 1: one decoded ``[BLOCK_K, BN]`` tile per step from gathered /
    expanded codes (:func:`decode_tile`)."""
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if LOADER == 2:
            offs_r = k0 // 32 + tl.arange(0, BLOCK_K // 32)
            acc = dot_rows(acc, x_ptr, stride_xm, offs_m, mask_m, q_ptr, sg_ptr, sc_ptr, z_ptr, offs_r,
                           offs_r < KP // 32, offs_n, mask_n, N, K, KP, G, IS_POT, W0, W1, IS_BF16)
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                         mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
            w = decode_tile(q_ptr, sg_ptr, sc_ptr, z_ptr, k0, offs_n, mask_n, N, K, KP, G,
                            IS_POT, W0, W1, IS_BF16, LOADER == 1, SCALE_PER_TILE, BLOCK_K)
            acc = tl.dot(xt, w, acc)
    return acc

"""@triton.jit decode helpers for the v2 layout (``format/layout.py``, FORMAT.md §4–5).

Two families, one packed copy:

* **Pair decoders** (the fast path): a packed word (or 3-word unit) → fp16x2 registers held as
  int32, two codes per register, by one rotate + one LOP3 per pair (one extra "prep" word per
  4-bit word / 3-bit word). PoT lanes are the scale-free ``±2^(E − qmax)`` (weight = lane · S_top,
  the stored top level); int lanes are ``(q − z)·2^−bits`` after one fused multiply-add (Marlin's
  magic number: ``(q_bits & mask) | 0x6400`` is the fp16 ``1024 + q·2^o``). ``pot_pair`` (per code: ``pot4_pair``,
  ``pot3_pair``, ``pot2_pair``) and ``int_pair_magic`` give pair ``J`` of a word: codes
  ``(2J, 2J + 1)`` in (low, high) lane. Each has its inline-PTX form (``USE_ASM``, compiled GPU runs)
  and its pure-Triton twin (the interpreter) side by side; ``bench/gpu_check.sh`` compares them bit for bit.
* **Tile decoder** ``decode_tile``: a ``[BLOCK_K, BLOCK_N]`` fp16/bf16 tile, bit-exact with the
  reference decode, gathering each code's bits through the layout's lookup table (``lut_ptr``,
  ``Layout.lut()``): any layout, any BLOCK_K multiple of 32 — simple and correct, not fast.
"""
import os

import triton
import triton.language as tl

# The interpreter's fp32 → bf16 cast truncates (and its "rtne" mode mishandles carries), so
# there bf16 rounding is done by integer arithmetic; compiled kernels use the hardware RNE cast.
INTERPRETER = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))

from ..format.layout import POT3_PREP_MASK as _P3M, POT3_PREP_ROT as _P3R, POT4_PREP_MASK as _P4M, POT4_PREP_ROT as _P4R
from ..format.layout import pot3_pair4_left, pot_left_pairs, pot_value_or

# fp16x2 lane masks of a PoT pair (E bits + sign bit of both lanes) and the OR constants
# (exponent field 15 − qmax) that make the lane ±2^(E − qmax).
POT_T2 = tl.constexpr(0x84008400)
POT_T3 = tl.constexpr(0x8C008C00)
POT_T4 = tl.constexpr(0x9C009C00)
MAGIC = tl.constexpr(0x64006400)  # fp16x2 (1024, 1024)
# the prep words of the v2 layout (format/layout.py states them; FORMAT.md §4)
POT4_PREP_ROT = tl.constexpr(_P4R)
POT4_PREP_MASK = tl.constexpr(_P4M)
POT3_PREP_ROT = tl.constexpr(_P3R)
POT3_PREP_MASK = tl.constexpr(_P3M)
# pairs of a word that decode by a left shift with their lanes swapped (layout.pot_left_pairs: bit J = pair J)
POT2_LEFT = tl.constexpr(pot_left_pairs(2))
POT3_LEFT = tl.constexpr(pot_left_pairs(3))
POT4_LEFT = tl.constexpr(pot_left_pairs(4))
# PoT3 pair 4 lane-swapped: (W << P3E_SHIFT) & P3E_MASK | (W << P3S_SHIFT) & P3S_MASK (layout.pot3_pair4_left)
(P3E_SHIFT, P3E_MASK), (P3S_SHIFT, P3S_MASK) = (tuple(tl.constexpr(v) for v in sm) for sm in pot3_pair4_left())
# fp16x2 OR constants (exponent field 15 − qmax in both lanes): plain constexprs, so the inline PTX
# f-strings see numbers on every triton (3.6 does not fold a jit helper's result into one)
POT_C2 = tl.constexpr(pot_value_or(2) * 0x10001)
POT_C3 = tl.constexpr(pot_value_or(3) * 0x10001)
POT_C4 = tl.constexpr(pot_value_or(4) * 0x10001)


# ------------------------------------------------------------------ bit helpers (uint32)
@triton.jit
def rotr(w, S: tl.constexpr):
    """Rotate a uint32 tensor right by the constant S (SHF.R.W on the GPU)."""
    if S % 32 == 0:
        r = w
    else:
        r = (w >> (S % 32)) | (w << (32 - S % 32))
    return r


@triton.jit
def lanes_or(w, S: tl.constexpr, MASK: tl.constexpr, OR: tl.constexpr, USE_ASM: tl.constexpr,
             LEFT: tl.constexpr = False):
    """``rotr(w, S) & MASK | OR`` — one pair of fp16 lanes: one SHF.R.W + one LOP3 as inline PTX
    (``USE_ASM``, compiled GPU runs) or the same bit operations in Triton (the interpreter; a GPU test
    compares the two bit for bit). ``LEFT`` (``S`` ≥ ``layout.POT_LEFT_MIN_ROT``): the pair rotated by ``S + 16``
    instead — the same two lanes swapped — which the PTX computes as ``(w << (16 − S)) & MASK | OR`` (a shift
    the compiler puts on the FMA pipe); the twin keeps the rotate, so the GPU comparison checks that identity."""
    R: tl.constexpr = (S + 16 * LEFT) % 32
    if USE_ASM:
        if R == 0:
            r = tl.inline_asm_elementwise(f"lop3.b32 $0, $1, {MASK}, {OR}, 0xEA;", "=r,r", [w],
                                          dtype=tl.uint32, is_pure=True, pack=1)
        elif LEFT:
            r = tl.inline_asm_elementwise(
                f"{{.reg .b32 t; shl.b32 t, $1, {16 - S}; lop3.b32 $0, t, {MASK}, {OR}, 0xEA;}}",
                "=r,r", [w], dtype=tl.uint32, is_pure=True, pack=1)
        else:
            r = tl.inline_asm_elementwise(
                f"{{.reg .b32 t; shf.r.wrap.b32 t, $1, $1, {R}; lop3.b32 $0, t, {MASK}, {OR}, 0xEA;}}",
                "=r,r", [w], dtype=tl.uint32, is_pure=True, pack=1)
    else:
        r = (rotr(w, R) & MASK) | OR
    return r


# ------------------------------------------------------------------ PoT pair decoders
@triton.jit
def prep_word(w, S: tl.constexpr, KEEP: tl.constexpr, USE_ASM: tl.constexpr):
    """``(w & KEEP) | (rotr(w, S) & ~KEEP)``: the word from which the pairs that one rotate + one LOP3
    cannot reach in ``w`` are (PTX: one SHF.R.W + one LOP3; Triton: ``^ 0xFFFFFFFF``, the interpreter
    refuses ``~`` constants on uint32 tensors)."""
    if USE_ASM:
        r = tl.inline_asm_elementwise(
            f"{{.reg .b32 t; shf.r.wrap.b32 t, $1, $1, {S}; lop3.b32 $0, $1, t, {KEEP}, 0xE4;}}",
            "=r,r", [w], dtype=tl.uint32, is_pure=True, pack=1)
    else:
        r = (w & KEEP) | (rotr(w, S) & (KEEP ^ 0xFFFFFFFF))
    return r


@triton.jit
def pot4_pair(w, J: tl.constexpr, USE_ASM: tl.constexpr, LEFT: tl.constexpr = False):
    """Pair J (codes 2J, 2J+1) of a PoT4 word as fp16x2 bits ±2^(E−7): pairs 0, 1 from the word
    rotated by 0 / 6, pairs 2, 3 from its prep word rotated by 3 / 9 (``layout.POT4_PAIR_SHIFTS``). ``LEFT`` (a
    pair of ``POT4_LEFT``): its lanes swapped (codes 2J+1, 2J), by a left shift (:func:`lanes_or`)."""
    tl.static_assert(not LEFT or (POT4_LEFT >> J) % 2 == 1, "this pair cannot decode by a left shift")
    if J < 2:
        p = lanes_or(w, 6 * J, POT_T4, POT_C4, USE_ASM, LEFT)
    else:
        p = lanes_or(prep_word(w, POT4_PREP_ROT, POT4_PREP_MASK, USE_ASM), 3 + 6 * (J - 2), POT_T4, POT_C4,
                     USE_ASM, LEFT)
    return p


@triton.jit
def pot2_pair(w, J: tl.constexpr, USE_ASM: tl.constexpr, LEFT: tl.constexpr = False):
    """Pair J (codes 2J, 2J+1) of a PoT2 word as fp16x2 bits ±2^(E−1): one rotate (by 2J) + one LOP3
    (``LEFT``: as :func:`pot4_pair`, a pair of ``POT2_LEFT``)."""
    tl.static_assert(not LEFT or (POT2_LEFT >> J) % 2 == 1, "this pair cannot decode by a left shift")
    return lanes_or(w, 2 * J, POT_T2, POT_C2, USE_ASM, LEFT)


@triton.jit
def pot3_pair(w, J: tl.constexpr, USE_ASM: tl.constexpr, LEFT: tl.constexpr = False):
    """Pair J ∈ 0..4 (codes 2J, 2J+1 of this word's 10) of a PoT3 word as fp16x2 bits ±2^(E−3):
    pairs 0–3 rotated by 3J, pair 4 from the prep word rotated by 12 (``layout.POT3_PAIR_SHIFTS``; ``LEFT``: as
    :func:`pot4_pair`, a pair of ``POT3_LEFT``; pair 4 then comes straight from the word, without the prep)."""
    tl.static_assert(not LEFT or (POT3_LEFT >> J) % 2 == 1, "this pair cannot decode by a left shift")
    if J < 4:
        p = lanes_or(w, 3 * J, POT_T3, POT_C3, USE_ASM, LEFT)
    elif LEFT and USE_ASM:  # no prep word: two left shifts (FMA pipe) + two LOP3 (the twin keeps prep + rotate)
        p = tl.inline_asm_elementwise(
            f"{{.reg .b32 e, s, t; shl.b32 e, $1, {P3E_SHIFT}; shl.b32 s, $1, {P3S_SHIFT}; "
            f"lop3.b32 t, e, {P3E_MASK}, {POT_C3}, 0xEA; lop3.b32 $0, s, {P3S_MASK}, t, 0xEA;}}",
            "=r,r", [w], dtype=tl.uint32, is_pure=True, pack=1)
    else:
        p = lanes_or(prep_word(w, POT3_PREP_ROT, POT3_PREP_MASK, USE_ASM), 12, POT_T3, POT_C3, USE_ASM, LEFT)
    return p


@triton.jit
def pot_pair(w, BITS: tl.constexpr, J: tl.constexpr, USE_ASM: tl.constexpr, LEFT: tl.constexpr = False):
    """Pair J of one PoT word (2-bit: 8 pairs a word, 3-bit: 5 + a spare, 4-bit: 4). ``LEFT`` (bit J of
    ``POT{BITS}_LEFT`` set): its two lanes swapped, decoded by a left shift (:func:`lanes_or`)."""
    if BITS == 4:
        p = pot4_pair(w, J, USE_ASM, LEFT)
    elif BITS == 3:
        p = pot3_pair(w, J, USE_ASM, LEFT)
    else:
        p = pot2_pair(w, J, USE_ASM, LEFT)
    return p


@triton.jit
def pot3_spare_pair(w0, w1, w2):
    """Codes 30, 31 of a 3-word PoT3 unit (their E0/E1/sign bits sit at bits 9 / 25 of words 0/1/2)."""
    a = rotr(w0, 31) & 0x04000400  # bit 9 → 10 (E0)
    b = rotr(w1, 30) & 0x08000800  # bit 9 → 11 (E1)
    c = rotr(w2, 26) & 0x80008000  # bit 9 → 15 (sign)
    return a | b | c | POT_C3


# ------------------------------------------------------------------ int pair decoders (Marlin-style)
@triton.jit
def int_pair_magic(w, SHIFT: tl.constexpr, O: tl.constexpr, BITS: tl.constexpr):
    """An int pair whose codes sit at lane offset ``O`` of ``w >> SHIFT`` → fp16x2 bits of
    ``1024 + q·2^O`` per lane (Marlin's magic number; O + BITS ≤ 10 keeps it exact).

    Layouts: int2 pairs J at bits 2J (+16), int4 at 4J, int8 at 8J, int3 (per word) at 3J; a pair
    whose offset would pass 8 is read from the word shifted by 10 / 8 / 9 (one SHF, shared).
    """
    MASK: tl.constexpr = ((1 << BITS) - 1) * 0x10001
    if SHIFT == 0:
        src = w
    else:
        src = w >> SHIFT
    return (src & (MASK << O)) | MAGIC


@triton.jit
def int3_spare_magic(w0, w1, w2):
    """Codes 30, 31 of a 3-word int3 unit (bit t of each code at bit 15 / 31 of word t), offset 0."""
    return ((w0 >> 15) & 0x00010001) | ((w1 >> 14) & 0x00020002) | ((w2 >> 13) & 0x00040004) | MAGIC


@triton.jit
def int_fix(h, O: tl.constexpr, zc, SCALE_BITS: tl.constexpr, USE_ASM: tl.constexpr):
    """Magic ``1024 + q·2^O`` lanes → ``(q − z)·2^−SCALE_BITS`` lanes with one HFMA2 (exact):
    ``h · 2^−(O + SCALE_BITS) + zc``, ``zc`` from :func:`int_zero_consts` (broadcast to ``h``)."""
    MUL: tl.constexpr = ((15 - O - SCALE_BITS) << 10) * 0x10001  # fp16x2 2^−(O + SCALE_BITS)
    return hfma2(h, tl.full(h.shape, MUL, tl.uint32), tl.broadcast_to(zc, h.shape), USE_ASM)


@triton.jit
def _int_zero(m, O: tl.constexpr, SCALE_BITS: tl.constexpr, PAIRED: tl.constexpr, USE_ASM: tl.constexpr):
    """fp16x2 bits of −(1024·2^−O + z)·2^−SCALE_BITS in both lanes from ``m`` = fp16 1024 + z:
    ``m · (−2^−S) + (1024 − 1024·2^−O)·2^−S``, every term and the result exact — so the HFMA2 on ``m`` in both
    lanes (``PAIRED``) and the fp16 FMA then one lane copy give the same bits."""
    C: tl.constexpr = (1024.0 - 1024.0 / (2 ** O)) / (2 ** SCALE_BITS)
    if PAIRED:
        NEG: tl.constexpr = (0x8000 | ((15 - SCALE_BITS) << 10)) * 0x10001  # fp16x2 −2^−S
        m2 = m.to(tl.uint16, bitcast=True).to(tl.uint32) * 0x10001
        c2 = tl.full(m.shape, C, tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32) * 0x10001
        r = hfma2(m2, tl.full(m.shape, NEG, tl.uint32), c2, USE_ASM)
    else:
        r = (m * (-1.0 / (2 ** SCALE_BITS)) + C).to(tl.uint16, bitcast=True).to(tl.uint32) * 0x10001
    return r


@triton.jit
def int_zero_consts(z, BITS: tl.constexpr, SCALE_BITS: tl.constexpr, PAIRED: tl.constexpr, USE_ASM: tl.constexpr):
    """The per-offset addends of :func:`int_fix` for one group's integer zero points ``z`` (lane offsets BITS·i,
    i < the pairs per source word of :func:`int_pair`), uint32 fp16x2, each ``z``'s shape: the magic number
    ``1024 + z`` as fp16, then one FMA per offset (no int → float conversion). ``PAIRED``: one HFMA2 per offset
    (``hfma2``: inline PTX with ``USE_ASM``), the GEMV's choice; the tensor-core tile takes the fp16 FMA and one
    lane copy: there an inline-asm op on its per-row constants makes triton 3.6 send the decoded tile through
    shared memory."""
    m = ((z.to(tl.uint32) & 0xFF) | 0x6400).to(tl.uint16).to(tl.float16, bitcast=True)  # 1024 + z, exact
    if BITS == 2:
        r = (_int_zero(m, 0, SCALE_BITS, PAIRED, USE_ASM), _int_zero(m, 2, SCALE_BITS, PAIRED, USE_ASM),
             _int_zero(m, 4, SCALE_BITS, PAIRED, USE_ASM), _int_zero(m, 6, SCALE_BITS, PAIRED, USE_ASM),
             _int_zero(m, 8, SCALE_BITS, PAIRED, USE_ASM))
    elif BITS == 3:
        r = (_int_zero(m, 0, SCALE_BITS, PAIRED, USE_ASM), _int_zero(m, 3, SCALE_BITS, PAIRED, USE_ASM),
             _int_zero(m, 6, SCALE_BITS, PAIRED, USE_ASM))
    elif BITS == 4:
        r = (_int_zero(m, 0, SCALE_BITS, PAIRED, USE_ASM), _int_zero(m, 4, SCALE_BITS, PAIRED, USE_ASM))
    else:
        r = (_int_zero(m, 0, SCALE_BITS, PAIRED, USE_ASM),)
    return r


@triton.jit
def int_pair(w, BITS: tl.constexpr, J: tl.constexpr, zcs, SCALE_BITS: tl.constexpr, USE_ASM: tl.constexpr):
    """Int pair J of a word (J < 5 for a word of an int3 unit, < 16 / BITS otherwise) → fp16x2 bits of
    ``(q − z)·2^−SCALE_BITS``: the magic number, then one HFMA2 that folds the zero point in (``zcs``:
    :func:`int_zero_consts`). Pair J sits at lane offset BITS·(J % SPLIT) of the word shifted by
    SHIFT·(J // SPLIT) (int2 10, int3 9, int4 / int8 8: one SHF shared by the pairs above the split)."""
    SPLIT: tl.constexpr = (BITS == 2) * 5 + (BITS == 3) * 3 + (BITS == 4) * 2 + (BITS == 8) * 1
    SHIFT: tl.constexpr = (BITS == 2) * 10 + (BITS == 3) * 9 + (BITS == 4) * 8 + (BITS == 8) * 8
    O: tl.constexpr = BITS * (J % SPLIT)
    return int_fix(int_pair_magic(w, SHIFT * (J // SPLIT), O, BITS), O, zcs[J % SPLIT], SCALE_BITS, USE_ASM)


@triton.jit
def int3_spare_pair(w0, w1, w2, zcs, SCALE_BITS: tl.constexpr, USE_ASM: tl.constexpr):
    """Codes 30, 31 of a 3-word int3 unit as :func:`int_pair` gives the others."""
    return int_fix(int3_spare_magic(w0, w1, w2), 0, zcs[0], SCALE_BITS, USE_ASM)


# ------------------------------------------------------------------ lane helpers (pure Triton)
@triton.jit
def lo_half(p):
    """Low fp16 lane of int32 fp16x2 bits → fp16 tensor."""
    return (p & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def hi_half(p):
    return ((p >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def join_halves(lo, hi):
    """Two fp16 tensors → int32 fp16x2 bits (lo in bits 0–15)."""
    a = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    b = hi.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return (a | (b << 16)).to(tl.uint32, bitcast=True)


# ------------------------------------------------------------------ fp16x2 arithmetic: PTX and its twin
@triton.jit
def hfma2(a, b, c, USE_ASM: tl.constexpr):
    """fp16x2 ``a·b + c`` per lane, one rounding (int32/uint32 bit containers)."""
    if USE_ASM:
        r = tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                      dtype=tl.uint32, is_pure=True, pack=1)
    else:
        # a·b + c of fp16 operands is exact in fp64 (≤ 22-bit product, exponent span < 53 bits), so
        # one rounding to fp16 is the fused fp16 FMA, bit for bit (FORMAT.md §6).
        lo = (lo_half(c).to(tl.float64) + lo_half(a).to(tl.float64) * lo_half(b).to(tl.float64)).to(tl.float16)
        hi = (hi_half(c).to(tl.float64) + hi_half(a).to(tl.float64) * hi_half(b).to(tl.float64)).to(tl.float16)
        lo_b = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        hi_b = hi.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        r = (lo_b | (hi_b << 16)).to(tl.uint32, bitcast=True)
    return r


# ------------------------------------------------------------------ generic tile decoder
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
def gather_codes(q_ptr, lut_ptr, offs_k, offs_n, N, mask, BITS: tl.constexpr, UNIT_WORDS: tl.constexpr,
                 UNIT_CODES: tl.constexpr):
    """Unsigned codes ``[BK, BN]`` int32 for k offsets ``offs_k`` (< KP) and columns ``offs_n``:
    bit j of code i of a unit is word ``lut >> 5``, bit ``lut & 31`` (``lut = lut_ptr[i·BITS + j]``).
    The unit's words are loaded once per k (one word, or three for 3-bit units)."""
    unit = offs_k // UNIT_CODES
    i = offs_k % UNIT_CODES
    base = q_ptr + (unit * UNIT_WORDS)[:, None] * N + offs_n[None, :]
    w0 = tl.load(base, mask=mask, other=0)
    if UNIT_WORDS == 3:
        w1 = tl.load(base + N, mask=mask, other=0)
        w2 = tl.load(base + 2 * N, mask=mask, other=0)
    code = tl.zeros(mask.shape, dtype=tl.int32)
    for j in tl.static_range(BITS):
        e = tl.load(lut_ptr + i * BITS + j)
        if UNIT_WORDS == 3:
            sel = (e >> 5)[:, None]
            words = tl.where(sel == 0, w0, tl.where(sel == 1, w1, w2))
        else:
            words = w0
        code |= ((words >> (e & 31)[:, None]) & 1) << j
    return code


@triton.jit
def int_decode16(q, z, s, IS_BF16: tl.constexpr):
    """(q − z)·s rounded once to fp16/bf16, bit-exact with ``format.uniform.decode_int``.

    fp16: ``q | 0x6400`` is 1024 + q; minus 1024 + z is exactly q − z; one fp16 multiply by s
    rounds the exact product once. bf16: the same at 2^23 in fp32, exact fp32 product, one RNE.
    """
    if IS_BF16:
        qf = (q | 0x4B000000).to(tl.float32, bitcast=True) - (z.to(tl.float32) + 8388608.0)
        w = to_bf16_rne(qf * s.to(tl.float32))
    else:
        qh = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        w = (qh - (z + 1024).to(tl.float16)) * s
    return w


@triton.jit
def pot_decode_codes(c, s, BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """PoT codes ``c = E | sign << (BITS−1)`` and their fp16 top levels S_top → weights (format v3):
    v = ±2^(E − qmax) by OR, times S_top — the exact product rounded once (fp16: one fp16 multiply,
    IEEE with subnormals; bf16: fp32 product, one RNE)."""
    QMAX: tl.constexpr = 2 ** (BITS - 1) - 1
    e = c & QMAX
    sgn = c >> (BITS - 1)
    vbits = (sgn << 15) | ((15 - QMAX) << 10) | (e << 10)
    v = vbits.to(tl.int16).to(tl.float16, bitcast=True)
    if IS_BF16:
        w = to_bf16_rne(v.to(tl.float32) * s.to(tl.float32))
    else:
        w = v * s.to(tl.float16)
    return w


@triton.jit
def decode_tile(q_ptr, lut_ptr, sc_ptr, z_ptr, k0, offs_n, mask_n, N, K, KP, G,
                IS_POT: tl.constexpr, BITS: tl.constexpr, UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr,
                IS_BF16: tl.constexpr, BLOCK_K: tl.constexpr):
    """Decoded weights ``W^T[k0 : k0 + BLOCK_K, offs_n]`` as fp16/bf16 ``[BLOCK_K, BN]``, bit-exact.

    ``z_ptr`` = zeros (int only). Rows k ≥ K decode to finite values (zero codes or masked words):
    callers mask x (or the store) there.
    """
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask = (offs_k < KP)[:, None] & mask_n[None, :]
    c = gather_codes(q_ptr, lut_ptr, offs_k, offs_n, N, mask, BITS, UNIT_WORDS, UNIT_CODES)
    s_ptrs = (offs_k // G)[:, None] * N + offs_n[None, :]
    s_mask = (offs_k < K)[:, None] & mask_n[None, :]  # per-channel: no group past K
    s = tl.load(sc_ptr + s_ptrs, mask=s_mask, other=1.0)
    if IS_POT:
        w = pot_decode_codes(c, s, BITS, IS_BF16)
    else:
        z = tl.load(z_ptr + s_ptrs, mask=s_mask, other=0).to(tl.int32)
        w = int_decode16(c, z, s, IS_BF16)
    return w


@triton.jit
def dot_k_range(acc, k_lo, k_hi, x_ptr, stride_xm, offs_m, mask_m, q_ptr, lut_ptr, sc_ptr, z_ptr,
                offs_n, mask_n, N, K, KP, G, IS_POT: tl.constexpr, BITS: tl.constexpr,
                UNIT_WORDS: tl.constexpr, UNIT_CODES: tl.constexpr, IS_BF16: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """``acc += x[offs_m, k_lo:k_hi] @ W^T[k_lo:k_hi, offs_n]`` in steps of ``BLOCK_K`` (the K loop
    of the small-batch and GEMM kernels), one decoded tile per step."""
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                     mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
        w = decode_tile(q_ptr, lut_ptr, sc_ptr, z_ptr, k0, offs_n, mask_n, N, K, KP, G,
                        IS_POT, BITS, UNIT_WORDS, UNIT_CODES, IS_BF16, BLOCK_K)
        acc = tl.dot(xt, w, acc)
    return acc


@triton.jit
def group_of_run(run, GROUP_RUNS: tl.constexpr):
    """Scale-group index of run ``run`` (32 k each): ``GROUP_RUNS`` runs per group, a compile-time
    constant, so this is a shift, not a run-time division; 0 means one group spans the row."""
    if GROUP_RUNS > 0:
        g = run // GROUP_RUNS
    else:
        g = run * 0
    return g

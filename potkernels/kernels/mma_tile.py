"""@triton.jit tile decoder for the tensor-core regimes (``small_batch`` swap-AB and ``gemm``), v2 layout.

A tensor-core kernel needs a whole decoded weight tile per K step. :func:`tile_nk` returns
``W[offs_n, k0 : k0 + BLOCK_K]`` as fp16/bf16 ``[BN, BLOCK_K]`` — the A operand of the swap-AB
product ``yᵀ = W · xᵀ``, and (``tl.trans``) the B operand of ``y = x · Wᵀ``.

A run of 32 k of one column is ``BITS`` packed words (FORMAT.md §4). With ``JOIN_TREE`` (the
compiled kernels) the thread that loads a run's words decodes all of it: the pair decoders of
``decode.py`` give 16 fp16x2 registers (one rotate + one LOP3 per pair for PoT — inline PTX on the GPU
(``USE_ASM``), the pure-Triton twin otherwise; Marlin's magic number then one exact HFMA2 to ``q − z`` for
int, the zero point folded into its addend; every shift a compile-time constant), a ``tl.join`` tree puts
them in k order in that thread's registers, and the two fp16 lanes are split off — so ``tl.reshape`` is
free. As the swap-AB A operand
with ``FRAG_K`` the columns are then permuted into the MMA operand's order (:func:`tile_k`): each
thread's run lands where the wgmma reads it from registers, with no shared-memory round trip; as the
gemm's B operand the tile reaches shared memory with 128-bit stores, once per weight per K step.
Without it (the interpreter's default) codes are gathered through the layout table
(``decode.gather_codes``): the same values in a dozen tensor ops instead of ~60 nested calls,
which is what the interpreter pays for; a test checks both give identical bits.

``SCALE_FREE``: the tile holds the scale-free values — PoT ``±2^(E − qmax)`` (the v2 OR decode),
int ``q − z`` — both exact in fp16 and bf16, and the caller multiplies the fp32 MMA result of the
tile by its group scale (:func:`group_scale`: the stored ``S_top`` / ``s``): one multiply per output per K step
instead of one per weight. It needs the K tile inside one group (``G % BLOCK_K == 0`` or per-channel). Group
indices come from ``GROUP_RUNS`` (runs of 32 k per group, compile-time: :func:`decode.group_of_run`).
Otherwise each weight is scaled: PoT ``v · S_top``, int ``(q − z)·s``, each the exact product
rounded once — bit-exact with the reference decode.

Rows ``k ≥ K`` decode to finite values (zero codes or masked words): callers mask x there.
"""
import triton
import triton.language as tl

from .decode import (gather_codes, group_of_run, hfma2, int3_spare_pair, int_pair, int_zero_consts, pot3_spare_pair,
                     pot_pair, to_bf16_rne)


@triton.jit
def _word(w0, w1, w2, w3, w4, w5, w6, w7, U: tl.constexpr):
    """The U-th word of a run (U a compile-time constant)."""
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
def _pair(w0, w1, w2, w3, w4, w5, w6, w7, zcs, P: tl.constexpr, IS_POT: tl.constexpr, BITS: tl.constexpr,
          USE_ASM: tl.constexpr):
    """fp16x2 bits (uint32) of codes 2P, 2P + 1 of every run: PoT ±2^(E − qmax); int ``q − z`` (``zcs``:
    ``decode.int_zero_consts`` of the zero points, folded into the magic number's HFMA2)."""
    if BITS == 3:
        if P == 15:
            if IS_POT:
                p = pot3_spare_pair(w0, w1, w2)
            else:
                p = int3_spare_pair(w0, w1, w2, zcs, 0, USE_ASM)
        else:
            w = _word(w0, w1, w2, w3, w4, w5, w6, w7, P // 5)
            if IS_POT:
                p = pot_pair(w, 3, P % 5, USE_ASM)
            else:
                p = int_pair(w, 3, P % 5, zcs, 0, USE_ASM)
    else:
        PAIRS: tl.constexpr = 16 // BITS
        w = _word(w0, w1, w2, w3, w4, w5, w6, w7, P // PAIRS)
        if IS_POT:
            p = pot_pair(w, BITS, P % PAIRS, USE_ASM)
        else:
            p = int_pair(w, BITS, P % PAIRS, zcs, 0, USE_ASM)
    return p


@triton.jit
def _run_pairs(w0, w1, w2, w3, w4, w5, w6, w7, zcs, START: tl.constexpr, STEP: tl.constexpr, COUNT: tl.constexpr,
               IS_POT: tl.constexpr, BITS: tl.constexpr, USE_ASM: tl.constexpr):
    """Pairs START, START + STEP, … (COUNT of them) of every run, stacked on log2(COUNT) trailing
    in-thread axes of size 2 in natural order: ``join(evens, odds)`` recursively."""
    if COUNT == 1:
        r = _pair(w0, w1, w2, w3, w4, w5, w6, w7, zcs, START, IS_POT, BITS, USE_ASM)
    else:
        r = tl.join(_run_pairs(w0, w1, w2, w3, w4, w5, w6, w7, zcs, START, 2 * STEP, COUNT // 2, IS_POT, BITS,
                               USE_ASM),
                    _run_pairs(w0, w1, w2, w3, w4, w5, w6, w7, zcs, START + STEP, 2 * STEP, COUNT // 2, IS_POT, BITS,
                               USE_ASM))
    return r


@triton.jit
def _load_word(q_ptr, offs_r, offs_n, mask_nr, N, U: tl.constexpr, BITS: tl.constexpr, EVEN: tl.constexpr):
    """Word U of runs ``offs_r`` ``[BN, R]`` uint32 (word 0 again when U ≥ BITS: never used); ``EVEN``:
    every address is in bounds (see :func:`tile_nk`), ``mask_nr`` unused."""
    u: tl.constexpr = U if U < BITS else 0
    ptrs = q_ptr + (offs_r[None, :] * BITS + u) * N + offs_n[:, None]
    if EVEN:  # no predicate per copy
        w = tl.load(ptrs)
    else:
        w = tl.load(ptrs, mask=mask_nr, other=0)
    return w.to(tl.uint32, bitcast=True)


@triton.jit
def _joined_values(q_ptr, offs_r, offs_n, mask_nr, N, zcs, s2, IS_POT: tl.constexpr, BITS: tl.constexpr,
                   USE_ASM: tl.constexpr, EVEN: tl.constexpr, PAIR_SCALE: tl.constexpr):
    """fp16 ``[BN, R, 16, 2]`` (pair, lane) of the runs by the join tree: PoT ±2^(E − qmax); int ``q − z``
    (``zcs``: see :func:`_pair`); with ``PAIR_SCALE`` times the run's scale (``s2`` ``[BN, R]`` fp16x2 bits,
    :func:`word_scale_pair`): ``pair · s + (−0)``, exactly the product rounded once."""
    w0 = _load_word(q_ptr, offs_r, offs_n, mask_nr, N, 0, BITS, EVEN)
    w1 = w0
    w2 = w0
    w3 = w0
    w4 = w0
    w5 = w0
    w6 = w0
    w7 = w0
    if BITS >= 2:
        w1 = _load_word(q_ptr, offs_r, offs_n, mask_nr, N, 1, BITS, EVEN)
    if BITS >= 3:
        w2 = _load_word(q_ptr, offs_r, offs_n, mask_nr, N, 2, BITS, EVEN)
    if BITS >= 4:
        w3 = _load_word(q_ptr, offs_r, offs_n, mask_nr, N, 3, BITS, EVEN)
    if BITS >= 8:
        w4 = _load_word(q_ptr, offs_r, offs_n, mask_nr, N, 4, BITS, EVEN)
        w5 = _load_word(q_ptr, offs_r, offs_n, mask_nr, N, 5, BITS, EVEN)
        w6 = _load_word(q_ptr, offs_r, offs_n, mask_nr, N, 6, BITS, EVEN)
        w7 = _load_word(q_ptr, offs_r, offs_n, mask_nr, N, 7, BITS, EVEN)
    pairs = _run_pairs(w0, w1, w2, w3, w4, w5, w6, w7, zcs, 0, 1, 16, IS_POT, BITS, USE_ASM)
    pairs = tl.reshape(pairs, [offs_n.shape[0], offs_r.shape[0], 16])
    if PAIR_SCALE:
        pairs = hfma2(pairs, tl.broadcast_to(s2[:, :, None], pairs.shape),
                      tl.full(pairs.shape, 0x80008000, tl.uint32), USE_ASM)
    lo = (pairs & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
    hi = (pairs >> 16).to(tl.uint16).to(tl.float16, bitcast=True)
    return tl.join(lo, hi)


@triton.jit
def tile_nk(q_ptr, lut_ptr, sc_ptr, k0, offs_n, mask_n, N, K, KP, GROUP_RUNS: tl.constexpr,
            IS_POT: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr,
            SCALE_FREE: tl.constexpr, JOIN_TREE: tl.constexpr, BLOCK_K: tl.constexpr, USE_ASM: tl.constexpr,
            FRAG_K: tl.constexpr = False, EVEN: tl.constexpr = False, WORDS: tl.constexpr = False):
    """Decoded ``W[offs_n, k0 : k0 + BLOCK_K]`` as fp16/bf16 ``[BN, BLOCK_K]`` (see module doc). ``sc_ptr``: the
    group values, PoT fp16 ``S_top``, int ``[scale | zero]`` words (``Packed.tile_scales``). ``FRAG_K``: the
    columns come in the order of :func:`tile_k` (the MMA operand's, see there) instead of natural k order.
    ``EVEN``: the caller clamped ``offs_n`` into ``[0, N)`` and the tile's runs all exist
    (``KP % BLOCK_K == 0``), so the packed words load without predicates (rows past N decode to garbage the
    caller never stores). ``WORDS``: PoT scales load as the 32-bit words that hold them (:func:`tile_word`).

    Int zero points load here, in the step that uses them, as whole words the pipeline copies with the packed
    words, and fold into the decode's HFMA2 (``decode.int_pair``): no load waited on, no subtraction."""
    R: tl.constexpr = BLOCK_K // 32
    BN: tl.constexpr = offs_n.shape[0]
    QMAX: tl.constexpr = 2 ** (BITS - 1) - 1
    offs_r = k0 // 32 + tl.arange(0, R)
    mask_nr = mask_n[:, None] & (offs_r < KP // 32)[None, :]
    # with the join tree in fp16, the run's scale multiplies the fp16x2 pairs in place (one HFMA2 a pair: multiplying
    # the split lanes made the compiler swap every pair's halves there and back, two PRMT a pair)
    PAIR_SCALE: tl.constexpr = JOIN_TREE and not SCALE_FREE and not IS_BF16
    if not SCALE_FREE:  # the per-run group words [BN, R]
        sw = tile_word(sc_ptr, offs_r[None, :], offs_n[:, None], mask_nr, N, GROUP_RUNS, IS_POT, WORDS)
    elif IS_POT:
        sw = tl.zeros([1, 1], tl.uint32)  # unused: the caller scales the MMA result
    else:  # the tile's int words [BN, 1], loaded again here although the caller loaded them a step ahead for the
        # scale: carried into the next step, the zero point would have to live in the decoded tile's layout, and
        # triton 3.6 (and 3.7 with two tile rows per thread) then sends that whole tile through shared memory
        sw = tile_word(sc_ptr, k0 // 32, offs_n, mask_n | EVEN, N, GROUP_RUNS, False, True)[:, None]
    if IS_POT:
        z = tl.zeros([1, 1], tl.int32)  # unused
    else:
        z = word_zero(sw)
    if JOIN_TREE:
        zcs = int_zero_consts(z, BITS, 0, False, USE_ASM)  # unused for PoT
        s2 = word_scale_pair(sw, offs_n[:, None], IS_POT, WORDS)  # unused without PAIR_SCALE
        v = _joined_values(q_ptr, offs_r, offs_n, mask_nr, N, zcs, s2, IS_POT, BITS, USE_ASM, EVEN,
                           PAIR_SCALE)  # [BN, R, 16, 2]
    else:
        UNIT_WORDS: tl.constexpr = 3 if BITS == 3 else 1
        UNIT_CODES: tl.constexpr = 32 if BITS == 3 else 32 // BITS
        offs_k = k0 + tl.arange(0, BLOCK_K)
        c = gather_codes(q_ptr, lut_ptr, offs_k, offs_n, N, (offs_k < KP)[:, None] & mask_n[None, :],
                         BITS, UNIT_WORDS, UNIT_CODES)
        c = tl.reshape(tl.trans(c), [BN, R, 16, 2])
        if IS_POT:  # the v2 OR decode: ±2^(E − qmax)
            bits = ((c >> (BITS - 1)) << 15) | ((15 - QMAX) << 10) | ((c & QMAX) << 10)
            v = bits.to(tl.int16).to(tl.float16, bitcast=True)
        else:
            v = c.to(tl.float16) - z[:, :, None, None].to(tl.float16)  # exactly q − z (integers below 2^9)
    if SCALE_FREE or PAIR_SCALE:
        if IS_BF16:
            w = v.to(tl.bfloat16)  # scale-free: a power of two or |q − z| ≤ 255, exact
        else:
            w = v
    else:
        s = word_scale(sw, offs_n[:, None], IS_POT, WORDS)[:, :, None, None]
        if IS_BF16:
            w = to_bf16_rne(v.to(tl.float32) * s)
        else:
            w = v * s.to(tl.float16)  # the exact product rounded once (PoT: only subnormal results round)
    if FRAG_K:  # [BN, R, 16, 2] = (n, run, pair, lane) → columns (a, c, h, t, lane) of tile_k
        w = tl.permute(tl.reshape(w, [BN, R // 4, 4, 8, 2, 2]), [0, 1, 3, 4, 2, 5])
    return tl.reshape(w, [BN, BLOCK_K])


@triton.jit
def tile_k(k0, BLOCK_K: tl.constexpr, FRAG_K: tl.constexpr):
    """k of each column of a :func:`tile_nk` tile, ``[BLOCK_K]`` int32 (the caller loads x in this order).

    ``FRAG_K`` (``BLOCK_K`` a multiple of 128): column ``j = 128a + 16c + 8h + 2t + l`` holds
    ``k = k0 + 128a + 32t + 4c + 2h + l``. In the A operand of a 16-bit MMA (wgmma ``m64nNk16`` from
    registers, ``mma.m16n8k16``) the thread with ``t = lane % 4`` holds the columns ``16c + 8h + 2t + l``,
    so in this order it holds exactly run ``4a + t`` of its row: the thread that decodes a run's words
    owns its values where the MMA wants them and the compiler needs no shared-memory round trip
    (STS + LDSM of the decoded tile) to reshuffle them. The sum over k does not care about the order."""
    j = tl.arange(0, BLOCK_K)
    if FRAG_K:
        k = k0 + (j // 128) * 128 + 32 * ((j // 2) % 4) + 4 * ((j // 16) % 8) + 2 * ((j // 8) % 2) + j % 2
    else:
        k = k0 + j
    return k


@triton.jit
def tile_word(ptr, run, offs_n, mask_n, N, GROUP_RUNS: tl.constexpr, IS_POT: tl.constexpr, WORDS: tl.constexpr):
    """The aligned 32-bit word that holds the group values of rows ``offs_n`` at runs ``run``, uint32, ``offs_n``
    and ``run`` broadcast (``[BN]`` and a scalar: one tile's; ``[BN, 1]`` and ``[1, R]``: per run). PoT: fp16
    scales, two rows to a word (``WORDS``; else the row's 16 bits alone, zero-extended); int: the ``[scale | zero]``
    words of ``Packed.tile_scales``, one per row. :func:`word_scale` / :func:`word_zero` take the values out.

    Why words: a whole register per row can be carried into the next K step untouched (a value loaded one step
    ahead), where two 16-bit values in one thread are packed into one register at the end of the loading step,
    which waits for the load right there; and 4-byte copies can ride cp.async. ``WORDS`` needs ``N`` even
    (:func:`launch.word_loads`: no word reaches past the tensor's end); neighbouring rows load the same word."""
    g = group_of_run(run, GROUP_RUNS)
    if not IS_POT:
        w = tl.load(ptr.to(tl.pointer_type(tl.uint32)) + g * N + offs_n, mask=mask_n, other=0)
    elif WORDS:  # row g starts a word: N is even
        w = tl.load(ptr.to(tl.pointer_type(tl.uint32)) + g * (N // 2) + offs_n // 2, mask=mask_n, other=0)
    else:
        w = tl.load(ptr.to(tl.pointer_type(tl.uint16)) + g * N + offs_n, mask=mask_n, other=0).to(tl.uint32)
    return w


@triton.jit
def group_scale(ptr, run, offs_n, mask_n, N, GROUP_RUNS: tl.constexpr, IS_POT: tl.constexpr,
                WORDS: tl.constexpr = False):
    """The fp32 group scale of rows ``offs_n`` at runs ``run`` (as in :func:`tile_word`; PoT the stored top level
    ``S_top``, int ``s``); masked: 0."""
    return word_scale(tile_word(ptr, run, offs_n, mask_n, N, GROUP_RUNS, IS_POT, WORDS), offs_n, IS_POT, WORDS)


@triton.jit
def _scale_bits(word, offs_n, IS_POT: tl.constexpr, WORDS: tl.constexpr):
    """Row ``offs_n``'s scale bits in its :func:`tile_word`, in the low half (the high half: the word's rest)."""
    if IS_POT and WORDS:
        v = word >> ((offs_n % 2) * 16).to(tl.uint32)
    else:  # the row's own word: the scale in its low half
        v = word
    return v


@triton.jit
def word_scale(word, offs_n, IS_POT: tl.constexpr, WORDS: tl.constexpr):
    """Row ``offs_n``'s fp32 scale in its :func:`tile_word`."""
    return _scale_bits(word, offs_n, IS_POT, WORDS).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def word_scale_pair(word, offs_n, IS_POT: tl.constexpr, WORDS: tl.constexpr):
    """Row ``offs_n``'s scale in both lanes of an fp16x2 register (uint32 bits), from its :func:`tile_word`."""
    return (_scale_bits(word, offs_n, IS_POT, WORDS) & 0xFFFF) * 0x10001


@triton.jit
def word_zero(word):
    """The int32 zero point in an int ``[scale | zero]`` word (bits 16–23): a compile-time shift. (A byte of a
    word of four uint8 zero points needs a per-row shift, and triton then lays the decoded tile out through
    shared memory.)"""
    return ((word >> 16) & 0xFF).to(tl.int32)

"""Format v2 bit layouts: where every bit of every code sits in the packed int32 words.

One packed copy serves every kernel. Words are stored ``[rows, N]`` (N contiguous) and hold
codes of ONE output column, consecutive along K. A *unit* of ``unit_words`` words (rows) holds
``unit_codes`` codes: 1 word of 16 codes (2-bit), 1 word of 8 codes (4-bit), 1 word of 4 codes
(int 8-bit) or 3 words of 32 codes (3-bit; a word can hold only 10 whole 3-bit codes, so 30 codes
are whole in their word and the last two of the unit are spread over the spare bits of the three
words — see FORMAT.md §4). Code ``i`` of a unit is input column ``k = unit·unit_codes + i``.

Codes (``b`` bits): PoT ``c = E | p << (b − 1)`` (E the exponent code, p the sign bit);
int ``c = q``. ``positions[i][j] = (word, bit)`` of bit ``j`` of code ``i``.

Why these positions (the decode recipes, FORMAT.md §5): code ``i = 2·pair + lane``; for PoT the
bits of a pair are placed so that ONE rotate of the word (or of one "prep" word per 4-bit word /
per 3-bit word) puts both codes at the fp16x2 lane positions ``{E: 10…, sign: 15}`` and
``{26…, 31}``, and one LOP3 (mask + OR of the constant exponent bits) finishes the pair as
±2^(E − qmax) in both fp16 lanes. For int the pairs sit at lane offsets ``o ≤ 8`` (low bits of each
16-bit half), Marlin style: ``(word & mask) | 0x6400`` is the fp16 ``1024 + q·2^o``.
"""
from __future__ import annotations

import dataclasses
import functools

WORD_BITS = 32

# PoT 4-bit: pairs 0, 1 from the word W (rotate right by 0 / 6); pairs 2, 3 from the prep word
# W2 = (W & POT4_PREP_MASK) | (rotr(W, 4) & ~POT4_PREP_MASK), rotated by 3 / 9.
POT4_PAIR_SHIFTS = (0, 6, 3, 9)
POT4_PREP_ROT = 4
POT4_PREP_MASK = 0x61106110
_POT4 = [[10, 11, 12, 15], [26, 27, 28, 31], [16, 17, 18, 21], [0, 1, 2, 5],
         [13, 14, 19, 22], [29, 30, 3, 6], [23, 20, 25, 24], [7, 4, 9, 8]]
# PoT 3-bit, per word: pairs 0–3 from W (rotr 0/3/6/9), pair 4 from the prep word
# W2 = (W & POT3_PREP_MASK) | (rotr(W, 1) & ~POT3_PREP_MASK) rotated by 12; bits 9 and 25 spare.
POT3_PAIR_SHIFTS = (0, 3, 6, 9, 12)
POT3_PREP_ROT = 1
POT3_PREP_MASK = 0x00C000C0
POT3_SPARE_BIT = 9
_POT3 = [[10, 11, 15], [26, 27, 31], [13, 14, 18], [29, 30, 2], [16, 17, 21], [0, 1, 5],
         [19, 20, 24], [3, 4, 8], [22, 23, 28], [6, 7, 12]]
INT3_SPARE_BIT = 15
POT2_PAIR_SHIFTS = tuple(2 * j for j in range(8))  # PoT 2-bit: pair J rotated right by 2J
# A pair rotated by S >= POT_LEFT_MIN_ROT also decodes by a LEFT shift, with its two lanes swapped: rotr(W, S + 16)
# is rotr(W, S) with the 16-bit halves exchanged, and when S + 16 >= 22 every bit the PoT lane mask keeps (bits
# >= 10 of each half) has wrapped round, so rotr(W, S + 16) & mask == (W << (16 - S)) & mask: an IMAD.SHL on the
# full-rate FMA pipe instead of an SHF.R.W on the half-rate integer pipe (the caller swaps the matching x lanes).
POT_LEFT_MIN_ROT = 6


def pot_left_pairs(bits: int) -> int:
    """Bit mask of the pairs J of one PoT word (or prep word) that can decode by a left shift, lanes swapped
    (rotated by at least ``POT_LEFT_MIN_ROT``): PoT2 J >= 3, PoT3 J >= 2, PoT4 J = 1, 3."""
    shifts = {2: POT2_PAIR_SHIFTS, 3: POT3_PAIR_SHIFTS, 4: POT4_PAIR_SHIFTS}[bits]
    return sum(1 << j for j, s in enumerate(shifts) if s >= POT_LEFT_MIN_ROT)


def pot3_pair4_left() -> tuple[tuple[int, int], tuple[int, int]]:
    """PoT3 pair 4 lane-swapped straight from its word, without the prep word: ``(W << a) & A | (W << b) & B``
    = ``rotr(prep, 12 + 16) & lane mask``, two shifts on the FMA pipe instead of the prep's rotate: returns
    ``((a, A), (b, B))`` — ``a`` moves both codes' E bits, ``b`` their sign bits, to the fp16 lanes."""
    lo, hi = _POT3[9], _POT3[8]  # swapped: code 9 in the low lane, code 8 in the high one
    e_shift, s_shift = 10 - lo[0], 15 - lo[2]
    assert (lo[1] + e_shift, hi[0] + e_shift, hi[1] + e_shift, hi[2] + s_shift) == (11, 26, 27, 31)
    e_mask = sum(1 << (b + e_shift) for b in (lo[0], lo[1], hi[0], hi[1]))
    s_mask = sum(1 << (b + s_shift) for b in (lo[2], hi[2]))
    return (e_shift, e_mask), (s_shift, s_mask)


@dataclasses.dataclass(frozen=True)
class Layout:
    kind: str
    bits: int
    unit_words: int
    unit_codes: int
    positions: tuple[tuple[tuple[int, int], ...], ...]  # [code][code bit] -> (word, bit)

    def lut(self) -> list[int]:
        """Flat ``[unit_codes · bits]`` table of ``word << 5 | bit`` (what generic kernels load)."""
        return [w << 5 | b for code in self.positions for (w, b) in code]


def _pot(bits: int) -> tuple[int, int, list]:
    if bits == 2:
        return 1, 16, [[(0, (10 + 16 * l + s) % 32), (0, (15 + 16 * l + s) % 32)]
                       for s in POT2_PAIR_SHIFTS for l in range(2)]
    if bits == 4:
        return 1, 8, [[(0, b) for b in code] for code in _POT4]
    pos = [[(w, b) for b in code] for w in range(3) for code in _POT3]
    pos += [[(w, POT3_SPARE_BIT + 16 * l) for w in range(3)] for l in range(2)]
    return 3, 32, pos


def _int(bits: int) -> tuple[int, int, list]:
    if bits in (2, 4, 8):
        per = 16 // bits  # pairs per word
        return 1, 2 * per, [[(0, bits * j + 16 * l + t) for t in range(bits)] for j in range(per) for l in range(2)]
    offs = (0, 3, 6, 9, 12)
    pos = [[(w, offs[j] + 16 * l + t) for t in range(3)] for w in range(3) for j in range(5) for l in range(2)]
    pos += [[(w, INT3_SPARE_BIT + 16 * l) for w in range(3)] for l in range(2)]
    return 3, 32, pos


@functools.lru_cache(maxsize=None)
def layout(kind: str, bits: int) -> Layout:
    """The v2 layout of ``kind`` ("pot" | "int") codes of ``bits`` bits."""
    if kind == "pot" and bits in (2, 3, 4):
        u, c, pos = _pot(bits)
    elif kind == "int" and bits in (2, 3, 4, 8):
        u, c, pos = _int(bits)
    else:
        raise ValueError(f"no v2 layout for {kind} bits={bits!r} (PoT: 2, 3, 4; int: 2, 3, 4, 8)")
    lay = Layout(kind, bits, u, c, tuple(tuple(p) for p in pos))
    flat = sorted((w, b) for code in lay.positions for (w, b) in code)
    assert flat == sorted(set(flat)) and len(flat) == u * WORD_BITS, (kind, bits)  # a permutation
    return lay


def pot_value_or(bits: int, dtype_mant: int = 10) -> int:
    """Constant OR-ed into a 16-bit lane: exponent field ``bias − qmax`` so that the lane is
    ±2^(E − qmax) (fp16: mant 10, bias 15; bf16: mant 7, bias 127)."""
    qmax = 2 ** (bits - 1) - 1
    bias = 15 if dtype_mant == 10 else 127
    return (bias - qmax) << dtype_mant

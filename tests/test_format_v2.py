"""Format v2 (the layout v3 keeps): layouts, packing round trips (hypothesis), the OR-only scale-free
decode bit-identical with v1's integer-add decode, the v1 → v2 repack and the committed v1 / v2
checkpoint fixtures (loaded into v3 bit-identically)."""
import hashlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file

from potkernels import IntConfig, PoTConfig, load_quantized, save_quantized
from potkernels.format import FORMAT_VERSION, layout, pack_codes, packed_rows, quantize_int, quantize_pot, unpack_codes
from potkernels.format.legacy import decode_pot_v1, pack_codes_v1, repack_v1_tensors, unpack_codes_v1, upgrade_v2_scales
from potkernels.format.pot import decode_pot, level_scales, pot_unit_values
from potkernels.nn import IntLinear, PoTLinear

FIXTURES = Path(__file__).parent / "fixtures"
CODES = [("pot", 2), ("pot", 3), ("pot", 4), ("int", 2), ("int", 3), ("int", 4), ("int", 8)]


@pytest.mark.parametrize("kind,bits", CODES)
def test_layout_is_a_permutation_and_rows_exact(kind, bits):
    lay = layout(kind, bits)
    flat = [p for code in lay.positions for p in code]
    assert len(flat) == len(set(flat)) == 32 * lay.unit_words and lay.unit_codes * bits == 32 * lay.unit_words
    assert packed_rows(4096, bits) == 4096 * bits // 32  # exactly b bits per weight at K % 32 == 0


@settings(max_examples=40, deadline=None)
@given(kind_bits=st.sampled_from(CODES), n=st.integers(1, 5), k=st.integers(1, 150), seed=st.integers(0, 2**31))
def test_pack_round_trip(kind_bits, n, k, seed):
    kind, bits = kind_bits
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.int32)
    packed = pack_codes(codes, kind, bits)
    assert packed.shape == (packed_rows(k, bits), n) and packed.dtype == torch.int32
    assert torch.equal(unpack_codes(packed, kind, bits, k), codes)


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([2, 3, 4]), n=st.integers(1, 4), k=st.integers(1, 130), seed=st.integers(0, 2**31))
def test_v1_repack_round_trip(bits, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    e = torch.randint(0, 2 ** (bits - 1), (n, k), generator=g, dtype=torch.int32)
    p = torch.randint(0, 2, (n, k), generator=g, dtype=torch.int32)
    v1 = {"qexp": pack_codes_v1(e, bits - 1), "qsign": pack_codes_v1(p, 1), "scales": torch.ones(1, n)}
    v2 = repack_v1_tensors("pot", bits, k, v1)
    assert set(v2) == {"qweight", "scales"}
    assert torch.equal(unpack_codes(v2["qweight"], "pot", bits, k), e | (p << (bits - 1)))
    q = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.int32)
    v2i = repack_v1_tensors("int", bits, k, {"qweight": pack_codes_v1(q, bits)})
    assert torch.equal(unpack_codes(v2i["qweight"], "int", bits, k), q)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_v3_decode_of_v2_scales_bit_identical_to_v1_over_all_codes_and_scale_range(bits, dtype):
    """Every (E, sign) against v1/v2 scales covering their whole range, both ends included: the v3
    decode of the upgraded scales (S_top = S·2^qmax) equals v1's integer-add decode of S."""
    qmax = 2 ** (bits - 1) - 1
    lo, hi = 2.0**-14, (2 - 2.0**-10) * 2.0 ** (15 - qmax)  # v1/v2's scale_range
    s = torch.cat([torch.tensor([lo, hi]), torch.exp2(torch.empty(500).uniform_(-14, 15 - qmax))])
    s16 = s.clamp(lo, hi).half()
    n = s16.numel()
    e = torch.arange(qmax + 1).repeat(2).view(1, -1).expand(n, -1).contiguous()
    p = torch.arange(2).repeat_interleave(qmax + 1).view(1, -1).expand(n, -1).contiguous()
    k = e.shape[1]
    scales = s16.view(1, n)  # one group per row (per-channel)
    v3 = decode_pot(e, p, upgrade_v2_scales(scales, bits), k, dtype, bits=bits)
    v1 = decode_pot_v1(e, p, scales, k, dtype)
    assert torch.equal(v3.view(torch.int16), v1.view(torch.int16))
    with pytest.raises(ValueError, match="outside the v1/v2 range"):
        upgrade_v2_scales(torch.tensor([[2.0**-15]]).half(), bits)


def test_unit_values_are_or_only_powers_of_two():
    for bits in (2, 3, 4):
        qmax = 2 ** (bits - 1) - 1
        e = torch.arange(qmax + 1).view(1, -1)
        v = pot_unit_values(e, torch.zeros_like(e), bits).float()
        assert torch.equal(v, torch.exp2(e.float() - qmax))
        assert torch.equal(pot_unit_values(e, torch.ones_like(e), bits).float(), -v)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_quantize_pot_v2_matches_v1_values(bits):
    w = torch.randn(24, 200)
    q = quantize_pot(w, PoTConfig(bits, 64))
    e, p = q.codes()
    s = level_scales(q.scales, bits).half()  # randn groups: normal S, as v1 stored it
    for dt in (torch.float16, torch.bfloat16):
        assert torch.equal(q.dequantize(dt).view(torch.int16), decode_pot_v1(e, p, s, 64, dt).view(torch.int16))
    assert q.bits_per_weight == pytest.approx((bits * 224 + 16 * 4) / 200)


def _check_decodes(model, digests: dict[str, str]) -> None:
    """Every quantized layer's fp16 and bf16 reference decode hashes to the recorded digest."""
    seen = 0
    for lname, mod in model.named_modules():
        if isinstance(mod, (PoTLinear, IntLinear)):
            assert "qexp" not in dict(mod.named_buffers())
            for dt in (torch.float16, torch.bfloat16):
                raw = mod.dequantize(dt).contiguous().view(torch.int16).numpy().tobytes()
                assert hashlib.sha256(raw).hexdigest() == digests[f"{lname}:{str(dt).split('.')[-1]}"], (lname, dt)
                seen += 1
    assert seen == len(digests) > 0


@pytest.mark.parametrize("name", ["v1_tiny_pot3", "v1_tiny_int2", "v2_tiny_pot4"])
def test_old_fixture_loads_losslessly(name, tmp_path):
    """Written by the v1 / v2 code (tests/fixtures/make_v{1,2}_fixture.py); v2_tiny_pot4 holds
    clamped tiny scales and all-zero groups. Decoded weights and logits equal the old code's, and
    saving the loaded model writes the current version with the same decoded weights."""
    path = FIXTURES / name
    meta = json.loads((path / "quantization_config.json").read_text())
    assert meta["format_version"] == int(name[1])
    model = load_quantized(path)
    digests = json.loads((path / "reference_decode.json").read_text())
    _check_decodes(model, digests)
    save_quantized(model, tmp_path / "resaved")
    resaved_meta = json.loads((tmp_path / "resaved" / "quantization_config.json").read_text())
    assert resaved_meta["format_version"] == FORMAT_VERSION
    _check_decodes(load_quantized(tmp_path / "resaved"), digests)
    ref = load_file(str(path / "reference_logits.safetensors"))
    with torch.no_grad():
        logits = model(ref["tokens"]).logits.float()
    # The weights are checked bit for bit above; the fp16 forward around them is transformers' and may
    # move by an ulp between its releases (v1 fixtures: 2^-11 at |logit| ~ 1 with transformers 5.24).
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=2**-9)


def test_v2_fixture_through_from_pretrained():
    """transformers (and vLLM) fill the stored v2 tensors in place; checkpoint.layer_weight upgrades each
    layer, so the decoded weights are the v2 code's, bit for bit."""
    import potkernels  # noqa: F401  (registers the quantization method)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "v2_tiny_pot4")
    _check_decodes(model, json.loads((FIXTURES / "v2_tiny_pot4" / "reference_decode.json").read_text()))


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="no v2 layout"):
        layout("pot", 8)
    with pytest.raises(ValueError, match="no v2 layout"):
        pack_codes(torch.zeros(2, 2, dtype=torch.int32), "int", 5)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_left_shift_pair_decodes_are_the_pairs_lane_swapped(bits):
    """The kernels' left-shift decode (decode.lanes_or LEFT, and PoT3 pair 4 without the prep word) of every pair
    ``layout.pot_left_pairs`` names gives that pair's two fp16 lanes swapped: codes (2J+1, 2J) as ±2^(E − qmax),
    checked against the layout's bit positions on random words (python integers: the PTX's arithmetic)."""
    from potkernels.format.layout import (POT2_PAIR_SHIFTS, POT3_PAIR_SHIFTS, POT3_PREP_MASK, POT3_PREP_ROT,
                                          POT4_PAIR_SHIFTS, POT4_PREP_MASK, POT4_PREP_ROT, pot3_pair4_left,
                                          pot_left_pairs, pot_value_or)

    qmax, full = 2 ** (bits - 1) - 1, 0xFFFFFFFF
    lane_mask = (qmax << 10 | 1 << 15) * 0x10001
    value_or = pot_value_or(bits) * 0x10001
    shifts = {2: POT2_PAIR_SHIFTS, 3: POT3_PAIR_SHIFTS, 4: POT4_PAIR_SHIFTS}[bits]
    per_word = 32 // bits if bits != 3 else 10

    def rotr(w, s):
        return ((w >> s) | (w << (32 - s))) & full if s % 32 else w

    def lane(c):
        return (c >> (bits - 1)) << 15 | pot_value_or(bits) | (c & qmax) << 10

    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (1, 32 * 64), generator=g, dtype=torch.int32)
    words = pack_codes(codes, "pot", bits)[:, 0].tolist()
    left = pot_left_pairs(bits)
    assert left and all(shifts[j] >= 6 for j in range(len(shifts)) if left >> j & 1)
    checked = 0
    for r, w in enumerate(words):
        w &= full
        unit_words, u = (3, r % 3) if bits == 3 else (1, 0)
        first = (r // unit_words) * (32 if bits == 3 else per_word) + u * per_word  # this word's code 0
        for j, s in enumerate(shifts):
            if not left >> j & 1:
                continue
            src = w  # pairs past the word's direct ones come from its prep word
            if bits == 4 and j >= 2:
                src = (w & POT4_PREP_MASK) | (rotr(w, POT4_PREP_ROT) & ~POT4_PREP_MASK & full)
            if bits == 3 and j == 4:
                src = (w & POT3_PREP_MASK) | (rotr(w, POT3_PREP_ROT) & ~POT3_PREP_MASK & full)
            c0, c1 = codes[0, first + 2 * j].item(), codes[0, first + 2 * j + 1].item()
            want = lane(c1) | lane(c0) << 16
            assert (((src << (16 - s)) & full) & lane_mask) | value_or == want
            assert (rotr(src, s + 16) & lane_mask) | value_or == want
            if bits == 3 and j == 4:  # straight from the word
                (a, ma), (b, mb) = pot3_pair4_left()
                assert ((w << a) & ma) | ((w << b) & mb) | value_or == want
            checked += 1
    assert checked >= 64

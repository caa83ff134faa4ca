"""The PoT and int codes: bit-exact decode, level sets, partial groups, storage (FORMAT.md §1–5)."""
import math

import pytest
import torch

from potkernels import IntConfig, PoTConfig, quantize_weight
from potkernels.format import level_scales, quantize_int, quantize_pot, scale_range

GROUPS = [32, 64, 128, None]


def _weights(n: int, k: int) -> torch.Tensor:
    """Random weights over several orders of magnitude, with exact zeros and both signs."""
    w = torch.randn(n, k) * torch.exp2(torch.randint(-12, 6, (n, 1)).float())
    w[:, ::17] = 0.0
    return w


def _expand(per_group: torch.Tensor, g: int, k: int) -> torch.Tensor:
    return per_group.t().repeat_interleave(g, dim=1)[:, :k]


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("k", [256, 200])
def test_pot_decode_bit_exact(bits, group_size, k):
    """Decode == float64 sign·S_top·2^(E−qmax) rounded once to fp16 / bf16; no fp16 rounding at all
    where the value is ≥ 2^−14 (normal) — only subnormal products can round (FORMAT.md §5)."""
    w = _weights(24, k)
    q = quantize_pot(w, PoTConfig(bits, group_size))
    e, p = q.codes()
    s = _expand(q.scales.double(), q.group_size, k)
    qmax = 2 ** (bits - 1) - 1
    ref = torch.where(p.bool(), -1.0, 1.0).double() * s * torch.exp2(e.double() - qmax)
    fp16 = q.dequantize(torch.float16)
    normal = ref.abs() >= 2.0**-14
    assert normal.any() and torch.equal(fp16.double()[normal], ref[normal])
    assert torch.equal(fp16.view(torch.int16), ref.to(torch.float16).view(torch.int16))
    bf16 = q.dequantize(torch.bfloat16)
    assert torch.equal(bf16.view(torch.int16), ref.to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_decode_at_the_edges_of_scale_range(bits):
    """S_top = 0 (exact zeros, code 0), the smallest subnormal 2^−24 and the largest 65504 with
    E = qmax: exact and finite (no overflow), in fp16 and bf16."""
    cfg = PoTConfig(bits, 32)
    lo, hi = scale_range(bits)
    assert lo == 0.0 and hi * 2**cfg.qmax == 65504.0
    w = torch.full((3, 32), 60000.0)
    w[:, 1::2] *= -1
    scales = torch.tensor([[lo], [2.0**-24 / 2**cfg.qmax], [hi]])
    q = quantize_pot(w, cfg, scales=scales)
    assert torch.equal(q.scales.double(), torch.tensor([[0.0, 2.0**-24, 65504.0]], dtype=torch.float64))
    assert torch.equal(q.codes()[0][0], torch.zeros(32, dtype=torch.int32))  # a zero scale stores code 0
    assert torch.equal(q.codes()[0][1:], torch.full((2, 32), cfg.qmax, dtype=torch.int32))
    for dtype in (torch.float16, torch.bfloat16):
        d = q.dequantize(dtype)
        assert torch.equal(d[0].view(torch.int16), torch.zeros(32, dtype=torch.int16))  # +0, bit for bit
        assert torch.equal(d[1:].double().abs(), torch.tensor([[2.0**-24], [65504.0]], dtype=torch.float64)
                           .to(dtype).double().expand(2, 32))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [32, 128])
def test_group_values_are_levels(bits, group_size):
    cfg = PoTConfig(bits, group_size)
    w = _weights(8, 3 * group_size)
    q = quantize_pot(w, cfg)
    d = q.dequantize(torch.float16).double().view(8, 3, group_size)
    s = level_scales(q.scales, bits).t().double()  # [N, n_groups]
    levels = s[..., None] * torch.exp2(torch.arange(cfg.qmax + 1, dtype=torch.float64))  # [N, G#, qmax+1]
    levels = levels.half().double()  # the decode's one rounding (subnormal levels of tiny groups)
    hit = (d.abs()[..., None] == levels[:, :, None, :]).any(-1)
    assert hit.all()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_group_hitting_every_level(bits):
    """A group made of ±S·2^e for every e decodes to exactly that set (RTN S = max / 2^qmax)."""
    cfg = PoTConfig(bits, 32)
    s = 2.0**-5
    e = torch.arange(32) % (cfg.qmax + 1)
    sign = torch.where(torch.arange(32) % 2 == 0, 1.0, -1.0) * torch.where(torch.arange(32) // (cfg.qmax + 1) % 2 == 0, 1.0, -1.0)
    w = (sign * s * torch.exp2(e.float()))[None]
    q = quantize_pot(w, cfg)
    assert float(q.scales) == s * 2**cfg.qmax  # the stored top level
    want = {sg * s * 2.0**ee for sg in (1.0, -1.0) for ee in range(cfg.qmax + 1)}
    assert set(q.dequantize().double().flatten().tolist()) == want
    assert torch.equal(q.dequantize().float(), w)


def test_rounding_is_in_the_log_domain():
    """Each level S·2^E is the one nearest |w| in log2 (unless clamped at S or S·2^qmax)."""
    cfg = PoTConfig(4, 64)
    w = _weights(16, 128)
    w[w == 0] = 1e-3
    q = quantize_pot(w, cfg)
    e, p = q.codes()
    s = _expand(level_scales(q.scales, 4).double(), 64, 128)
    level = s * torch.exp2(e.double())
    ratio = torch.log2(w.double().abs() / s)
    inside = (ratio > 0) & (ratio < cfg.qmax)
    err = (torch.log2(level) - torch.log2(w.double().abs())).abs()
    assert (err[inside] <= 0.5 + 1e-6).all()
    assert torch.equal(p.bool(), w < 0)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_bits_per_weight_exact(bits, group_size):
    w = torch.randn(16, 2 * group_size)
    assert quantize_weight(w, PoTConfig(bits, group_size)).bits_per_weight == bits + 16 / group_size
    ib = {2: 2, 3: 3, 4: 4}[bits]
    assert quantize_weight(w, IntConfig(ib, group_size)).bits_per_weight == ib + 24 / group_size


def test_bits_per_weight_per_channel_and_int8():
    w = torch.randn(16, 512)
    assert quantize_weight(w, PoTConfig(3, None)).bits_per_weight == 3 + 16 / 512
    assert quantize_weight(w, IntConfig(8, 128)).bits_per_weight == 8 + 24 / 128


@pytest.mark.parametrize("k", [100, 200, 576])
def test_partial_last_group(k):
    """K % G != 0: the last group's scale comes from its real columns; storage pads K to 32."""
    g = 128 if k != 100 else 32
    w = torch.randn(8, k)
    w[:, -(k % g):] *= 0.125  # a smaller last group: its scale must come from its own columns
    pot = quantize_pot(w, PoTConfig(4, g))
    n_groups = -(-k // g)
    assert tuple(pot.scales.shape) == (n_groups, 8)
    last = w[:, (n_groups - 1) * g:]
    assert torch.equal(pot.scales[-1], last.abs().amax(1).half())  # S_top = max|w| (RTN)
    assert pot.qweight.shape[0] == 4 * -(-k // 32) and pot.dequantize().shape == (8, k)
    assert pot.bits_per_weight == (4 * 32 * -(-k // 32) + 16 * n_groups) / k
    it = quantize_int(w, IntConfig(4, g))
    lo, hi = last.amin(1).clamp(max=0), last.amax(1).clamp(min=0)
    assert torch.equal(it.scales[-1], ((hi - lo) / 15).half())
    err = (it.dequantize().float() - w)[:, (n_groups - 1) * g:].abs()
    assert (err <= it.scales[-1].float()[:, None] * 1.001).all()  # ≤ s/2 inside, ≤ s at a rounded end


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_all_zero_groups_decode_to_exact_zeros(bits):
    """PoT: S_top = 0 and code 0, so +0 bit for bit; int: s = 2^−24, z = 0, q = 0 (FORMAT.md §2)."""
    w = torch.randn(4, 96)
    w[:, 32:64] = 0.0
    w[2] = 0.0
    q = quantize_pot(w, PoTConfig(bits, 32))
    assert (q.scales[1] == 0).all() and (q.scales[:, 2] == 0).all()
    qi = quantize_int(w, IntConfig(bits, 32))
    for dtype in (torch.float16, torch.bfloat16):
        for d in (q.dequantize(dtype), qi.dequantize(dtype)):
            assert torch.isfinite(d).all()
            assert torch.equal(d[:, 32:64].view(torch.int16), torch.zeros(4, 32, dtype=torch.int16))
            assert torch.equal(d[2].view(torch.int16), torch.zeros(96, dtype=torch.int16))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, None])
def test_int_decode_exact(bits, group_size):
    """(q − z)·s is exact in float64 → one rounding; decode equals it in fp16 and bf16."""
    w = _weights(16, 160)
    q = quantize_int(w, IntConfig(bits, group_size))
    codes = q.codes().double()
    g = q.group_size
    ref = (codes - _expand(q.zeros.double(), g, 160)) * _expand(q.scales.double(), g, 160)
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(q.dequantize(dtype).view(torch.int16), ref.to(dtype).view(torch.int16))


def test_int_one_signed_group_is_not_clipped():
    w = torch.rand(4, 64) + 0.5  # all positive
    q = quantize_int(w, IntConfig(4, 64))
    err = (q.dequantize().float() - w).abs()
    assert (err <= q.scales.float().t() * 1.001).all()  # ≤ s/2 inside, ≤ s at a rounded end


def test_sqnr_grows_with_bits():
    from potkernels import sqnr_db

    w = torch.randn(64, 256)
    s = [sqnr_db(w, quantize_weight(w, PoTConfig(b, 128)).dequantize()) for b in (2, 3, 4)]
    assert s[0] < s[1] < s[2] and math.isfinite(s[2])

"""Format v3 (issue 21): the stored PoT scale is the top level S_top (fp16, subnormal and zero legal).

Property tests over magnitudes 1e-8 … 1e2 with all-zero and one-non-zero groups, PoT 2/3/4 and int
2/3/4: the reference decode, the Triton kernels under the interpreter (dequant bit-exact, matmuls
within tolerance with exact zeros for zero rows), the v2 → v3 upgrade, and the low-SQNR warning.
"""
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from potkernels import IntConfig, LowSQNRWarning, PoTConfig, load_quantized, quantize_model, save_quantized, sqnr_db
from potkernels.format import FORMAT_VERSION, level_scales, quantize_weight, top_scales
from potkernels.format.common import group_sqnr_db
from potkernels.format.legacy import upgrade_state_dict, upgrade_v2_scales
from potkernels.format.pot import exponent_codes
from potkernels.integrations.hf import SQNR_WARN_DB, warn_low_sqnr
from potkernels.kernels import int_dequantize_triton, int_matmul_triton, pot_dequantize_triton, pot_matmul_triton
from potkernels.nn import PoTLinear
from tiny_models import tiny_llama

CODES = [("pot", 2), ("pot", 3), ("pot", 4), ("int", 2), ("int", 3), ("int", 4)]
# Property tests pass warn_sqnr_db=None: PoT2 and tiny groups are below the threshold by design.
PROPS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cfg(kind: str, bits: int, group: int):
    return PoTConfig(bits, group) if kind == "pot" else IntConfig(bits, group)


def structured_weight(log10_std: float, group: int, seed: int, k: int = 256) -> torch.Tensor:
    """``[8, k]`` randn·std with row 0 all zero, row 1's first group zero, row 2's first group holding
    one non-zero weight; rows 3–7 plain random."""
    w = torch.randn(8, k, generator=torch.Generator().manual_seed(seed)) * 10.0**log10_std
    w[0] = 0
    w[1, :group] = 0
    w[2, :group] = 0
    w[2, group // 3] = -2.5 * 10.0**log10_std
    return w


def _bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16)


@PROPS
@given(kind_bits=st.sampled_from(CODES), log10_std=st.floats(-8, 2), group=st.sampled_from([32, 128]),
       seed=st.integers(0, 2**31))
def test_reference_decode_over_magnitudes(kind_bits, log10_std, group, seed):
    """Zero groups decode to +0 bit for bit; the single non-zero weight of a PoT group is its top
    level, fp16(w), exactly (down to the smallest fp16 subnormal 2^−24: below it fp16(|w|) can exceed
    |w|·√2 and the lower level is nearer in the log domain); down to std 1e-6 the SQNR is within 0.5 dB of the same weights scaled
    by a power of two to std ≈ 1 (the format's range costs nothing there)."""
    kind, bits = kind_bits
    cfg = _cfg(kind, bits, group)
    w = structured_weight(log10_std, group, seed)
    q = quantize_weight(w, cfg, warn_sqnr_db=None)
    q.validate()
    for dtype in (torch.float16, torch.bfloat16):
        d = q.dequantize(dtype)
        assert torch.isfinite(d).all()
        assert torch.equal(_bits_of(d[0]), torch.zeros(256, dtype=torch.int16))
        assert torch.equal(_bits_of(d[1, :group]), torch.zeros(group, dtype=torch.int16))
    one = w[2, group // 3]
    if kind == "pot" and abs(one) >= 2.0 ** -24:
        assert q.dequantize(torch.float16)[2, group // 3] == one.half()  # RTN: S_top = fp16(max|w|)
    if log10_std >= -6:
        scale = 2.0 ** round(-log10_std * math.log2(10))  # exact in fp32
        rest, big = w[3:], w[3:] * scale
        near_one = sqnr_db(big, quantize_weight(big, cfg, warn_sqnr_db=None).dequantize())
        assert sqnr_db(rest, quantize_weight(rest, cfg, warn_sqnr_db=None).dequantize()) >= near_one - 0.5


@PROPS
@given(bits=st.sampled_from([2, 3, 4]), log10_std=st.floats(-8, 2), seed=st.integers(0, 2**31))
def test_exponent_codes_are_exact_log_rounding(bits, log10_std, seed):
    """E = clamp(round(log2(|w|/S)), 0, qmax) against the stored S, checked in exact arithmetic:
    |w| / S lies in (2^(E−½), 2^(E+½)) unless clamped (compared squared in float64, all exact)."""
    cfg = PoTConfig(bits, 32)
    w = structured_weight(log10_std, 32, seed, k=64)
    top = top_scales(w.abs().view(8, 2, 32).amax(-1) / 2**cfg.qmax * 1.3, bits)  # off-RTN scales
    s = level_scales(top, bits).repeat_interleave(32, dim=1)
    e = exponent_codes(w, s, cfg.qmax).double()
    w2, s2 = w.double().square(), s.double().square()
    live = (s2 > 0) & (w2 > 0)
    assert (e[~live] == 0).all()
    low_ok = (e == 0) | (w2 > s2 * torch.exp2(2 * e - 1))
    high_ok = (e == cfg.qmax) | (w2 < s2 * torch.exp2(2 * e + 1))
    assert (low_ok & high_ok)[live].all()


# --------------------------------------------------------------------- kernels (interpreter)
def _dequant(q, dtype):
    c = q.config
    if c.kind == "pot":
        return pot_dequantize_triton(q.qweight, q.scales, c.bits, q.group_size, q.in_features, dtype,
                                     config={"BLOCK_K": 64, "BLOCK_N": 32})
    return int_dequantize_triton(q.qweight, q.scales, q.zeros, c.bits, q.group_size, q.in_features, dtype,
                                 config={"BLOCK_K": 64, "BLOCK_N": 32})


def _matmul(x, q, regime, config):
    c = q.config
    if c.kind == "pot":
        return pot_matmul_triton(x, q.qweight, q.scales, None, c.bits, q.group_size, q.in_features,
                                 regime=regime, config=config)
    return int_matmul_triton(x, q.qweight, q.scales, q.zeros, None, c.bits, q.group_size, q.in_features,
                             regime=regime, config=config)


@PROPS
@given(kind_bits=st.sampled_from(CODES), log10_std=st.floats(-8, 2), seed=st.integers(0, 2**31))
def test_dequant_kernel_bit_exact_over_magnitudes(kind_bits, log10_std, seed):
    """Subnormal and zero scales included: the dequant kernel gives the reference's bits."""
    kind, bits = kind_bits
    q = quantize_weight(structured_weight(log10_std, 32, seed, k=128), _cfg(kind, bits, 32), warn_sqnr_db=None)
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(_bits_of(_dequant(q, dtype)), _bits_of(q.dequantize(dtype))), dtype


MATMULS = [("gemv", 1, torch.float16, {"BLOCK_N": 16, "split": 2}),  # fp16x2 runs, S_top per run
           ("gemv", 1, torch.bfloat16, {"BLOCK_N": 16, "split": 1}),  # fp32 FFMA path
           ("small_batch", 4, torch.float16, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "split": 1}),  # acc scale
           ("gemm", 16, torch.float16, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 128})]  # scale in the weights


@pytest.mark.parametrize("regime,m,dtype,config", MATMULS, ids=["gemv", "gemv-bf16", "small_batch", "gemm"])
@pytest.mark.parametrize("kind,bits", CODES)
def test_matmul_kernels_tiny_and_zero_weights(regime, m, dtype, config, kind, bits):
    """std 1e-5 weights with zero rows / groups: each regime is within 1e-2 of the reference
    product and a zero row of W gives exactly zero outputs."""
    q = quantize_weight(structured_weight(-5, 32, bits, k=128), _cfg(kind, bits, 32), warn_sqnr_db=None)
    x = torch.randn(m, 128).to(dtype)
    ref = x.float() @ q.dequantize(torch.bfloat16 if dtype == torch.bfloat16 else torch.float16).float().t()
    y = _matmul(x, q, regime, config).float()
    assert torch.equal(y[:, 0], torch.zeros(m))  # the all-zero row, bit for bit (+0)
    assert float((y - ref).norm() / ref.norm()) <= 1e-2


# --------------------------------------------------------------------- v2 → v3
def test_upgrade_state_dict_is_exact_and_refuses_foreign_scales():
    s_v2 = torch.tensor([[2.0**-14, 1.5, 511.0]]).half()  # v2 PoT4 range: [2^-14, 511.75]
    out = upgrade_state_dict({"a.scales": s_v2, "b.scales": s_v2, "x": torch.ones(1)}, 2,
                             [("a", "pot", 4, 64), ("b", "int", 4, 64)])
    assert torch.equal(out["a.scales"].double(), s_v2.double() * 128) and out["b.scales"] is s_v2
    assert upgrade_state_dict(out, 3, [("a", "pot", 4, 64)])["a.scales"] is out["a.scales"]
    for bad in ([[0.0]], [[512.0]]):
        with pytest.raises(ValueError, match="outside the v1/v2 range"):
            upgrade_v2_scales(torch.tensor(bad).half(), 4)
    with pytest.raises(ValueError, match="lacks a.scales"):
        upgrade_state_dict({}, 2, [("a", "pot", 4, 64)])
    with pytest.raises(ValueError, match="format version 7"):
        upgrade_state_dict({}, 7, [])


# --------------------------------------------------------------------- report and warning
def test_group_sqnr_edge_values():
    w = torch.zeros(2, 64)
    w[1, :32] = 1.0
    w_hat = torch.zeros(2, 64)
    w_hat[0, 32:] = 1.0
    db = group_sqnr_db(w, w_hat, 32)
    assert db[0, 0] == math.inf and db[1, 1] == math.inf  # exact (zero decoded to zero)
    assert db[0, 1] == -math.inf and db[1, 0] == 0.0  # zero decoded non-zero / signal decoded to zero


def test_low_sqnr_layer_is_named_once():
    """A layer whose weights sit below fp16's resolution decodes to zeros: its worst group is
    0 dB, it is named in one LowSQNRWarning per call; the threshold is settable, None silences it."""
    model = nn.Sequential(nn.Linear(64, 16), nn.Linear(16, 64), nn.Linear(64, 8))
    with torch.no_grad():
        model[0].weight.mul_(1e-9)  # below 2^-25: S_top rounds to 0
        model[1].weight[3] = 0.0  # an all-zero row is exact: no warning for it
    with pytest.warns(LowSQNRWarning) as rec:
        quantize_model(model, PoTConfig(4, 32), skip=())
    assert len(rec) == 1 and "1 quantized weight(s)" in str(rec[0].message) and "'0'" not in str(rec[0].message)
    assert str(rec[0].message).count(" dB)") == 1 and "0 (0.0 dB)" in str(rec[0].message)
    report = {r.name: r for r in model.quantization_report}
    assert report["0"].worst_group_sqnr_db == 0.0 < SQNR_WARN_DB
    assert report["1"].worst_group_sqnr_db > 10 and report["2"].worst_group_sqnr_db > 10
    assert warn_low_sqnr(model.quantization_report, None) == []
    with pytest.warns(LowSQNRWarning, match="below 100"):
        assert warn_low_sqnr(model.quantization_report, 100.0) == ["0", "1", "2"]
    fresh = nn.Sequential(nn.Linear(64, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(fresh, IntConfig(4, 32), skip=())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny = nn.Sequential(nn.Linear(64, 16))
        with torch.no_grad():
            tiny[0].weight.mul_(1e-9)
        quantize_model(tiny, PoTConfig(4, 32), skip=(), warn_sqnr_db=None)


def test_quantize_weight_names_its_worst_group():
    w = torch.randn(4, 96)
    w[1, 32:64] *= 1e-9  # below fp16's resolution: this group decodes to zeros (0 dB)
    with pytest.warns(LowSQNRWarning, match=r"row 1, group 1\] \(0\.0 dB\)"):
        quantize_weight(w, PoTConfig(4, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_weight(w, PoTConfig(4, 32), warn_sqnr_db=None)
        quantize_weight(torch.randn(4, 96), PoTConfig(4, 32))


def test_report_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = quantize_model(tiny_llama(), PoTConfig(4, 32))
    save_quantized(model, tmp_path / "ckpt")
    back = load_quantized(tmp_path / "ckpt")
    assert [r.worst_group_sqnr_db for r in back.quantization_report] == \
        [r.worst_group_sqnr_db for r in model.quantization_report]
    assert all(isinstance(m, PoTLinear) for n, m in back.named_modules() if n.endswith("q_proj"))
    assert FORMAT_VERSION == 3

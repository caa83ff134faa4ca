"""Triton kernels vs the reference decode, on fresh random weights and activations.

Runs under the Triton interpreter on CPU (conftest sets TRITON_INTERPRET=1) and compiled on a
GPU when ``TRITON_INTERPRET=0`` and CUDA is available (``bench/gpu_check.sh``); the GPU run adds
bigger shapes and bf16 ``tl.dot`` paths, which the interpreter cannot run (its bf16 dot is wrong).
Outputs are poisoned with NaN before each launch so an unwritten element cannot pass.
"""
import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from potkernels.format import IntConfig, PoTConfig, quantize_int, quantize_pot
from potkernels.kernels import api, configs, launch
from potkernels.kernels.decode import int_zero_consts
from potkernels.kernels import int_dequantize_triton, int_matmul_triton, pot_dequantize_triton, pot_matmul_triton

ON_GPU = torch.cuda.is_available() and not configs.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
gpu_only = pytest.mark.skipif(not ON_GPU, reason="compiled GPU run only (TRITON_INTERPRET=0 with CUDA)")


def make_weight(kind: str, bits: int, group: int | None, n: int, k: int):
    """Random [n, k] weight quantized (RTN) on the test device."""
    w = torch.randn(n, k, device=DEVICE) * torch.rand(n, 1, device=DEVICE)  # rows of varied magnitude
    cfg = PoTConfig(bits, group) if kind == "pot" else IntConfig(bits, group)
    return quantize_pot(w, cfg) if kind == "pot" else quantize_int(w, cfg)


def dequant(packed, dtype, **kw):
    if isinstance(packed.config, PoTConfig):
        return pot_dequantize_triton(packed.qweight, packed.scales, packed.config.bits,
                                     packed.group_size, packed.in_features, dtype, **kw)
    return int_dequantize_triton(packed.qweight, packed.scales, packed.zeros, packed.config.bits,
                                 packed.group_size, packed.in_features, dtype, **kw)


def matmul(x, packed, bias, **kw):
    if isinstance(packed.config, PoTConfig):
        return pot_matmul_triton(x, packed.qweight, packed.scales, bias, packed.config.bits,
                                 packed.group_size, packed.in_features, **kw)
    return int_matmul_triton(x, packed.qweight, packed.scales, packed.zeros, bias, packed.config.bits,
                             packed.group_size, packed.in_features, **kw)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "output has NaN (unwritten or bad decode)"
    return float((out.double() - ref.double()).norm() / ref.double().norm())


# K deliberately not a multiple of the group (partial last group) and N odd where cheap.
GROUP_K = {32: 100, 64: 200, 128: 576, 256: 300, None: 100}
DEQUANT_CASES = [("pot", b, g) for b in (2, 3, 4) for g in GROUP_K] + \
                [("int", b, g) for b in (2, 3, 4, 8) for g in GROUP_K]


@pytest.mark.parametrize("kind,bits,group", DEQUANT_CASES)
def test_dequant_bit_exact(kind, bits, group):
    """Every bits × group size, fp16 and bf16: identical bits to the reference."""
    packed = make_weight(kind, bits, group, 37, GROUP_K[group])
    for dtype in (torch.float16, torch.bfloat16):
        ref = packed.dequantize(dtype)
        out = torch.full_like(ref, float("nan"))
        dequant(packed, dtype, config={"BLOCK_K": 64, "BLOCK_N": 32}, out=out)
        assert torch.equal(out.view(torch.int16), ref.view(torch.int16)), dtype


def test_dequant_default_config_large_tile():
    """Table config (BLOCK_K larger than K) on the K = 576, N = 1536 shape."""
    packed = make_weight("pot", 4, 128, 1536, 576)
    ref = packed.dequantize(torch.float16)
    assert torch.equal(dequant(packed, torch.float16).view(torch.int16), ref.view(torch.int16))


# (kind, bits, group, M, N, K, regime, x dtype, config override)
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
SB_SPLIT = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "split": 2, "reduce": "kernel"}
SB_ONE = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "split": 1}
SB_BIGK = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 128, "split": 2}
GV_SPLIT = {"BLOCK_N": 16, "split": 3}
GV_ROWS = {"BLOCK_N": 32, "BLOCK_R": 4, "split": 3}  # 4 runs per step: a split's last step part-empty
MATMUL_CASES = [
    ("pot", 4, 128, 1, 512, 576, "gemv", F16, None),
    ("int", 4, 128, 1, 384, 576, "gemv", F16, None),
    ("pot", 4, 128, 16, 1536, 576, "small_batch", F16, None),
    ("int", 4, 128, 16, 1536, 576, "small_batch", F16, None),
    ("pot", 4, 128, 130, 1536, 576, "gemm", F16, None),
    ("int", 4, 128, 130, 96, 576, "gemm", F16, None),
    ("pot", 3, 32, 3, 37, 100, "small_batch", F16, SB_SPLIT),
    ("int", 8, None, 3, 37, 100, "small_batch", F16, None),
    ("pot", 2, 64, 64, 96, 200, "small_batch", F16, None),
    ("int", 3, 64, 64, 96, 200, "small_batch", F16, SB_SPLIT),
    ("pot", 2, None, 130, 40, 100, "gemm", F16, {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 128}),
    ("pot", 4, 64, 20, 40, 600, "small_batch", F16, SB_BIGK),
    ("int", 3, 32, 20, 40, 600, "small_batch", F16, SB_BIGK),
    ("pot", 4, 128, 5, 48, 576, "small_batch", F16, SB_ONE),
    ("int", 4, None, 130, 48, 100, "gemm", F16, {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 128, "scale": "acc"}),
    ("pot", 3, 128, 70, 48, 576, "dequant_mm", F16, None),
    ("int", 8, 128, 70, 48, 576, "dequant_mm", F32, None),
    ("int", 2, 32, 130, 40, 100, "gemm", F16, None),
    ("pot", 3, 256, 1, 33, 300, "gemv", BF16, GV_SPLIT),
    ("int", 2, 256, 1, 33, 300, "gemv", BF16, GV_SPLIT),
    ("pot", 4, None, 1, 64, 576, "gemv", BF16, None),
    ("int", 8, 64, 1, 65, 200, "gemv", BF16, None),
    ("pot", 4, 32, 1, 50, 96, "gemv", F32, None),
    ("int", 3, 128, 2, 50, 576, "gemv", F32, None),
    ("pot", 3, 64, 1, 40, 600, "gemv", F16, GV_ROWS),
    ("int", 4, 32, 1, 40, 608, "gemv", F16, GV_ROWS),
    ("int", 8, None, 1, 33, 200, "gemv", BF16, GV_ROWS),
    ("pot", 2, 128, 1, 40, 300, "gemv", F32, {"BLOCK_N": 16, "BLOCK_R": 2, "split": 2}),
    ("pot", 3, 128, 1, 40, 2600, "gemv", F16, {"BLOCK_N": 16, "BLOCK_R": 64, "waves": 1}),  # the table default
    ("int", 4, 64, 1, 24, 2600, "gemv", BF16, {"BLOCK_N": 16, "BLOCK_R": 64, "waves": 1}),  # 82 runs: a part step
    ("pot", 3, 128, 1, 48, 4096, "gemv", F16, {"BLOCK_N": 16, "BLOCK_R": 64}),  # whole tiles: unpredicated loads
    ("pot", 2, 128, 1, 32, 4096, "gemv", F16, {"BLOCK_N": 16, "BLOCK_R": 128, "num_warps": 8}),  # mid-size layers
    ("int", 2, 128, 1, 32, 2048, "gemv", F16, {"BLOCK_N": 16, "BLOCK_R": 16, "split": 4}),  # ... one step per split
    ("pot", 4, 64, 1, 32, 1024, "gemv", BF16, {"BLOCK_N": 16, "BLOCK_R": 8}),  # ... fp32 lanes
    ("pot", 4, 128, 2, 512, 576, "gemv", F16, None),  # x rows share one decode
    ("int", 3, 64, 3, 40, 600, "gemv", F16, GV_ROWS),
    ("pot", 3, None, 5, 33, 200, "gemv", BF16, {"BLOCK_N": 16, "BLOCK_R": 2, "split": 2, "rows_per_program": 2}),
    ("pot", 2, 128, 16, 50, 576, "small_batch", F32, None),
    ("pot", 3, 64, 130, 64, 200, None, F16, None),
    ("int", 4, 256, 16, 64, 300, None, F16, None),
    ("pot", 4, 256, 1, 64, 300, None, F16, None),
]


@pytest.mark.parametrize("kind,bits,group,m,n,k,regime,dtype,config", MATMUL_CASES)
def test_matmul_vs_reference(kind, bits, group, m, n, k, regime, dtype, config):
    packed = make_weight(kind, bits, group, n, k)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(n, device=DEVICE) if (m + bits) % 2 else None
    w_dec = packed.dequantize(torch.bfloat16 if dtype == BF16 else F16).float()
    ref = x.float() @ w_dec.t() + (bias if bias is not None else 0)
    out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)
    res = matmul(x, packed, bias, regime=regime, config=config, out=out)
    assert res.dtype == dtype and res.shape == (m, n)
    assert rel_err(out, ref) <= 1e-2


@pytest.mark.parametrize("kind,bits,dtype", [("pot", 4, F16), ("int", 2, F16), ("pot", 3, BF16)])
def test_gemv_rows_equal_one_row_at_a_time(kind, bits, dtype):
    """A program decodes its weights once for all its x rows; each row's arithmetic is the M = 1
    kernel's, so the rows match single-row calls bit for bit (split-K reduction included)."""
    packed = make_weight(kind, bits, 64, 48, 320)
    x = torch.randn(3, 320, device=DEVICE).to(dtype)
    cfg = {"BLOCK_N": 32, "BLOCK_R": 2, "split": 3}
    rows = matmul(x, packed, None, regime="gemv", config=cfg)
    for i in range(3):
        assert torch.equal(rows[i:i + 1], matmul(x[i:i + 1], packed, None, regime="gemv", config=cfg)), i


@pytest.mark.parametrize("split,reduce,k", [(1, "fused", 320), (4, "fused", 320), (4, "kernel", 320),
                                             (17, "fused", 1088)])  # 17 > GEMV_REDUCE_CHUNK: two chunks
def test_gemv_split_k_deterministic(split, reduce, k):
    """Split-K partial sums are reduced in a fixed order: two runs give identical bits (the
    single-launch reduction also leaves its counters at zero for the next launch)."""
    packed = make_weight("pot", 4, 64, 32, k)
    x = torch.randn(1, k, device=DEVICE, dtype=F16)
    cfg = {"BLOCK_N": 32, "split": split, "reduce": reduce}
    a, b = matmul(x, packed, None, regime="gemv", config=cfg), matmul(x, packed, None, regime="gemv", config=cfg)
    assert torch.equal(a, b)
    ref = x.float() @ packed.dequantize(F16).float().t()
    assert rel_err(a, ref) <= 1e-2


@settings(max_examples=300, deadline=None)
@given(tiles=st.integers(1, 5000), k_steps=st.integers(1, 512), waves=st.integers(1, 16), sms=st.integers(1, 200))
def test_split_count_fills_one_round_of_programs(tiles, k_steps, waves, sms):
    """The split-K count is the most splits whose programs fit in ``waves`` per SM (none left for a
    nearly empty extra round), at least one, at most the K steps; an explicit ``split`` wins."""
    s = launch.split_count(tiles, k_steps, {"waves": waves}, sms)
    assert 1 <= s <= k_steps
    assert s == 1 or tiles * s <= waves * sms
    assert s == k_steps or tiles * (s + 1) > waves * sms
    assert launch.split_count(tiles, k_steps, {"waves": waves, "split": 3}, sms) == min(3, k_steps)


def test_dispatch_by_m():
    packed = make_weight("pot", 4, 128, 64, 256)
    w = api.Packed("pot", packed.qweight, packed.scales, None, 4, 128, 256)
    d = configs.lookup("dispatch", "pot", 4, 1, 64, 256)
    assert api.pick_regime(w, 1) == "gemv"
    assert api.pick_regime(w, int(d["small_batch_max_m"])) == "small_batch"
    assert api.pick_regime(w, int(d["small_batch_max_m"]) + 1) == "gemm"


def test_empty_batch():
    packed = make_weight("int", 4, 32, 16, 64)
    y = matmul(torch.randn(0, 64, device=DEVICE, dtype=F16), packed, None)
    assert y.shape == (0, 16)


def test_clear_errors():
    packed = make_weight("pot", 4, 32, 16, 64)
    with pytest.raises(ValueError, match="in_features"):
        matmul(torch.randn(2, 63, device=DEVICE, dtype=F16), packed, None)
    with pytest.raises(TypeError, match="fp16, bf16 or fp32"):
        matmul(torch.ones(2, 64, device=DEVICE, dtype=torch.int32), packed, None)
    with pytest.raises(ValueError, match="scales must be"):
        pot_matmul_triton(torch.randn(2, 64, device=DEVICE, dtype=F16), packed.qweight,
                          packed.scales[:, :8], None, 4, 32, 64)
    with pytest.raises(TypeError, match="fp16"):
        pot_matmul_triton(torch.randn(2, 64, device=DEVICE, dtype=F16), packed.qweight,
                          packed.scales.float(), None, 4, 32, 64)
    with pytest.raises(ValueError, match="bits"):
        pot_matmul_triton(torch.randn(2, 64, device=DEVICE, dtype=F16), packed.qweight,
                          packed.scales, None, 5, 32, 64)
    with pytest.raises(ValueError, match="(packed codes|scales) must be"):  # wrong K
        pot_matmul_triton(torch.randn(2, 96, device=DEVICE, dtype=F16), packed.qweight,
                          packed.scales, None, 4, 32, 96)
    with pytest.raises(ValueError, match="bias"):
        matmul(torch.randn(2, 64, device=DEVICE, dtype=F16), packed, torch.zeros(15, device=DEVICE))
    with pytest.raises(TypeError, match="dtype"):
        dequant(packed, torch.float32)
    with pytest.raises(ValueError, match="regime"):
        matmul(torch.randn(2, 64, device=DEVICE, dtype=F16), packed, None, regime="bogus")


# ------------------------------------------------------------------ GPU-only (compiled) checks
LLAMA = [(4096, 4096), (4096, 1024), (14336, 4096)]  # (K, N)


@gpu_only
@pytest.mark.parametrize("kind,bits", [("pot", 4), ("pot", 3), ("int", 4)])
@pytest.mark.parametrize("m", [1, 2, 64, 128, 512, 2048])  # gemv, small batch (three configs), gemm (two)
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_gpu_large_shapes(kind, bits, m, dtype):
    for k, n in LLAMA:
        packed = make_weight(kind, bits, 128, n, k)
        x = torch.randn(m, k, device=DEVICE).to(dtype)
        ref = x.float() @ packed.dequantize(dtype).float().t()
        out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)
        matmul(x, packed, None, out=out)
        assert rel_err(out, ref) <= 1e-2, (k, n)


@gpu_only
@pytest.mark.parametrize("scale", ["acc", "weight"])
@pytest.mark.parametrize("regime,m", [("small_batch", 16), ("small_batch", 64), ("gemm", 256)])
def test_gpu_bf16_dot(regime, m, scale):
    """bf16 tensor-core dots (the interpreter cannot run them), both places of the group scale."""
    packed = make_weight("pot", 4, 128, 1000, 1100)
    cfg = dict(configs.lookup(regime, "pot", 4, m, 1000, 1100), scale=scale)
    for dtype in (F16, BF16):
        x = torch.randn(m, 1100, device=DEVICE).to(dtype)
        ref = x.float() @ packed.dequantize(dtype).float().t()
        assert rel_err(matmul(x, packed, None, regime=regime, config=cfg), ref) <= 1e-2


def test_decode_bench_checksum():
    """The decode-bound kernel with reps = 1 over all runs sums x · W = Σ (x @ W^T) (one group)."""
    from potkernels.kernels.decode_bench import decode_reduce

    for kind, bits in (("pot", 3), ("int", 4)):
        packed = make_weight(kind, bits, None, 40, 192)  # per channel: the kernel reads group 0's scale
        w = api.Packed(kind, packed.qweight, packed.scales, getattr(packed, "zeros", None), bits, 192, 192)
        x = torch.randn(192, device=DEVICE, dtype=F16)
        sums = decode_reduce(w, x, reps=1, config={"RUNS": 6, "BLOCK_N": 16})
        ref = (x.float() @ packed.dequantize(F16).float().t()).sum()
        assert abs(float(sums.sum()) - float(ref)) <= 1e-2 * float(ref.abs() + 1)


@pytest.mark.parametrize("kind,bits", [("pot", 4), ("pot", 3), ("pot", 2), ("int", 4)])
def test_gemv_fp16_run_error_bound(kind, bits):
    """fp16x2 accumulation over runs of 32 k (16 terms per lane), then fp32 (FORMAT.md §6):
    |y − y_exact| ≤ γ_16 · Σ_k |x_k w_k| + fp32 slack, element-wise, and never NaN/Inf."""
    n, k = 64, 256
    packed = make_weight(kind, bits, 128, n, k)
    x = (torch.randn(1, k, device=DEVICE) * 3).to(F16)
    w = packed.dequantize(F16).double()
    exact = x.double() @ w.t()
    mag = x.double().abs() @ w.abs().t()
    u = 2.0**-11
    gamma16 = 16 * u / (1 - 16 * u)
    out = torch.full((1, n), float("nan"), dtype=torch.float32, device=DEVICE)
    y16 = matmul(x, packed, None, regime="gemv", config={"BLOCK_N": 32, "split": 2})
    out.copy_(y16.float())
    assert torch.isfinite(out).all()
    # the final fp16 store rounds once more (≤ u·|y|)
    bound = gamma16 * mag + u * exact.abs() + 1e-6 * mag + 2.0**-20
    assert bool(((out.double() - exact).abs() <= bound).all())


def test_bf16_dot_regimes_under_interpreter_are_correct():
    """bf16 activations on the tl.dot regimes (M > 1): the interpreter's bf16 dot is wrong, so the
    dispatcher decodes bit-exactly and multiplies in torch there; the result must match the reference."""
    if ON_GPU:
        pytest.skip("interpreter only")
    packed = make_weight("pot", 3, 64, 40, 200)
    x = torch.randn(5, 200).to(BF16)
    ref = x.float() @ packed.dequantize(BF16).float().t()
    for regime in ("small_batch", "gemm"):
        out = matmul(x, packed, None, regime=regime)
        assert out.dtype == BF16 and rel_err(out, ref) <= 1e-2


@triton.jit
def _zero_consts(out_ptr, BITS: tl.constexpr, SCALE_BITS: tl.constexpr, PAIRED: tl.constexpr, OFFSETS: tl.constexpr):
    z = tl.arange(0, 256)
    zcs = int_zero_consts(z, BITS, SCALE_BITS, PAIRED, False)
    for i in tl.static_range(OFFSETS):
        tl.store(out_ptr + i * 256 + z, zcs[i].to(tl.int32, bitcast=True))


@pytest.mark.parametrize("bits,offsets", [(2, 5), (3, 3), (4, 2), (8, 1)])
def test_int_zero_consts_exact_in_both_forms(bits, offsets):
    """``decode.int_zero_consts`` for every zero point 0 … 255 and lane offset: −(1024·2^−O + z)·2^−S exactly, in
    both fp16 lanes, from the paired HFMA2 (the GEMV's) and from the fp16 FMA (the tensor-core tile's)."""
    z = torch.arange(256, dtype=torch.float64)
    for scale_bits in (0, bits):
        expect = torch.stack([-(1024.0 / 2 ** (bits * i) + z) / 2 ** scale_bits for i in range(offsets)])
        lane = expect.to(torch.float16).view(torch.int16).long() & 0xFFFF
        assert torch.equal(expect.to(torch.float16).double(), expect)  # representable: the FMAs round nothing
        for paired in (True, False):
            out = torch.zeros(offsets, 256, dtype=torch.int32, device=DEVICE)
            _zero_consts[(1,)](out, BITS=bits, SCALE_BITS=scale_bits, PAIRED=paired, OFFSETS=offsets)
            got = out.cpu().long() & 0xFFFFFFFF
            assert torch.equal(got, lane | (lane << 16)), (scale_bits, paired)


@gpu_only
@pytest.mark.parametrize("kind,bits", [("pot", 2), ("pot", 3), ("pot", 4), ("int", 2), ("int", 3), ("int", 4), ("int", 8)])
def test_gpu_tensor_core_asm_equals_twin(kind, bits, monkeypatch):
    """The tensor-core regimes' inline-PTX pair decode (int: the zero point folded into its HFMA2) and its
    pure-Triton twin give the same bits: small_batch in the table's config (fragment column order), in natural
    order, and gemm (the scale multiplying the fp16x2 pairs)."""
    packed = make_weight(kind, bits, 128, 4096, 4096)
    natural = {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
    for regime, m, cfg in (("small_batch", 16, None), ("small_batch", 16, natural), ("gemm", 300, None)):
        x = torch.randn(m, 4096, device=DEVICE).to(F16)
        a = matmul(x, packed, None, regime=regime, config=cfg)
        monkeypatch.setenv("POTKERNELS_NO_ASM", "1")
        b = matmul(x, packed, None, regime=regime, config=cfg)
        monkeypatch.delenv("POTKERNELS_NO_ASM")
        assert torch.equal(a.view(torch.int16), b.view(torch.int16)), (regime, cfg)


@gpu_only
@pytest.mark.parametrize("kind,bits", [("pot", 2), ("pot", 3), ("pot", 4), ("int", 2), ("int", 3), ("int", 4), ("int", 8)])
def test_gpu_gemv_asm_equals_twin(kind, bits, monkeypatch):
    """The inline-PTX GEMV and its pure-Triton twin give the same bits (fp16 and bf16 x, one row and
    three rows sharing a decode), and the decode-bound kernel's checksums agree too."""
    from potkernels.kernels.decode_bench import decode_reduce

    packed = make_weight(kind, bits, 128, 4096, 4096)
    w = api.Packed(kind, packed.qweight, packed.scales, getattr(packed, "zeros", None), bits, 128, 4096)
    for dtype, m in ((F16, 1), (BF16, 1), (F16, 3)):
        x = torch.randn(m, 4096, device=DEVICE).to(dtype)
        a = matmul(x, packed, None, regime="gemv")
        monkeypatch.setenv("POTKERNELS_NO_ASM", "1")
        b = matmul(x, packed, None, regime="gemv")
        monkeypatch.delenv("POTKERNELS_NO_ASM")
        assert torch.equal(a.view(torch.int16), b.view(torch.int16)), (dtype, m)
    x = torch.randn(4096, device=DEVICE, dtype=F16)
    assert torch.isfinite(decode_reduce(w, x, 2)).all()


def test_packed_geometry_checked_once_per_layer_shape():
    """Forward passes re-check nothing: the packed-weight checks depend only on dtypes, shapes, devices and the
    code parameters and are cached on exactly those; bad input still fails on every call (errors are not cached)."""
    from potkernels.kernels import packed as packed_module

    packed_module._check.cache_clear()
    w = make_weight("pot", 3, 64, 40, 200)
    x = torch.randn(1, 200, device=DEVICE).to(F16)
    for _ in range(3):
        assert torch.isfinite(matmul(x, w, None)).all()
    info = packed_module._check.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    for _ in range(2):
        with pytest.raises(TypeError, match="scales must be fp16"):
            pot_matmul_triton(x, w.qweight, w.scales.float(), None, 3, 64, 200)

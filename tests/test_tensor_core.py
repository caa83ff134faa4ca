"""Tensor-core regimes (swap-AB ``small_batch``, ``gemm``) vs the reference, every code and M class.

Interpreter on CPU (conftest) or compiled on a GPU (``TRITON_INTERPRET=0``). Shapes have odd N,
K not a multiple of the group (partial last group) or of 32, and M on both sides of every tile
and dispatch boundary. Outputs are poisoned with NaN so an unwritten element cannot pass.
"""
import gc
import io
import json

import pytest
import torch
import triton
import triton.language as tl

from potkernels.format import IntConfig, PoTConfig, quantize_int, quantize_pot
from potkernels.kernels import api, configs, gemv, int_matmul_triton, launch, pot_matmul_triton
from potkernels.kernels import packed as packed_module
from potkernels.kernels.mma_tile import tile_k, tile_word, word_scale, word_zero
from potkernels.kernels.packed import Packed, scale_zero_words

ON_GPU = torch.cuda.is_available() and not configs.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
CODES = [("pot", 2), ("pot", 3), ("pot", 4), ("int", 2), ("int", 3), ("int", 4), ("int", 8)]
M_VALUES = [2, 3, 16, 17, 64, 65, 130, 257]
GROUP_K = [(32, 100), (64, 200), (128, 300), (None, 75)]  # K % G != 0 (partial group), K % 32 != 0


def make_weight(kind: str, bits: int, group, n: int, k: int):
    w = torch.randn(n, k, device=DEVICE) * torch.rand(n, 1, device=DEVICE)
    cfg = PoTConfig(bits, group) if kind == "pot" else IntConfig(bits, group)
    return quantize_pot(w, cfg) if kind == "pot" else quantize_int(w, cfg)


def run(packed, x, bias=None, **kw):
    out = torch.full((x.shape[0], packed.out_features), float("nan"), dtype=x.dtype, device=DEVICE)
    bits, g, k = packed.config.bits, packed.group_size, packed.in_features
    if isinstance(packed.config, PoTConfig):
        return pot_matmul_triton(x, packed.qweight, packed.scales, bias, bits, g, k, out=out, **kw)
    return int_matmul_triton(x, packed.qweight, packed.scales, packed.zeros, bias, bits, g, k, out=out, **kw)


def reference(packed, x, bias=None):
    w = packed.dequantize(BF16 if x.dtype == BF16 else F16).float()
    return x.float() @ w.t() + (bias.float() if bias is not None else 0)


def rel_err(out, ref) -> float:
    assert not torch.isnan(out).any(), "NaN in the output (unwritten element or bad decode)"
    return float((out.double() - ref.double()).norm() / ref.double().norm())


CASES = [(kind, bits, m, *GROUP_K[(i + j) % len(GROUP_K)], (F16, F32, BF16)[(i + 2 * j) % 3])
         for i, (kind, bits) in enumerate(CODES) for j, m in enumerate(M_VALUES)]


@pytest.mark.parametrize("kind,bits,m,group,k,dtype", CASES)
def test_dispatch_vs_reference(kind, bits, m, group, k, dtype):
    """The regime the table picks for M (small_batch up to its bound, gemm above), odd N = 37."""
    packed = make_weight(kind, bits, group, 37, k)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(37, device=DEVICE) if m % 2 else None
    y = run(packed, x, bias)
    assert y.dtype == dtype and y.shape == (m, 37)
    assert rel_err(y, reference(packed, x, bias)) <= 1e-2


SB = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 1}
GEMM = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 4, "num_stages": 1}


@pytest.mark.parametrize("regime,config", [
    ("small_batch", dict(SB, split=3)),                       # split-K, fused reduction
    ("small_batch", dict(SB, split=3, reduce="kernel")),      # split-K, second launch
    ("small_batch", dict(SB, scale="weight")),                # scale folded into the weights
    ("small_batch", dict(SB, BLOCK_K=128, BLOCK_M=32)),       # K tile spans two groups of 64
    ("gemm", GEMM),
    ("gemm", dict(GEMM, scale="acc", BLOCK_K=128)),           # per-group scale on the accumulator
])
@pytest.mark.parametrize("kind,bits", [("pot", 4), ("int", 3)])
def test_forced_regimes_and_configs(regime, config, kind, bits):
    packed = make_weight(kind, bits, 64, 45, 333)
    for m in ((5, 20) if regime == "small_batch" else (70,)):
        x = torch.randn(m, 333, device=DEVICE).to(F16)
        assert rel_err(run(packed, x, regime=regime, config=config), reference(packed, x)) <= 1e-2, m


def test_scale_modes_agree_closely():
    """Scale on the accumulator vs folded into the weights: same sum, rounded differently."""
    packed = make_weight("pot", 3, 128, 64, 512)
    x = torch.randn(16, 512, device=DEVICE).to(F16)
    a = run(packed, x, regime="small_batch", config=dict(SB, BLOCK_K=128, scale="acc"))
    b = run(packed, x, regime="small_batch", config=dict(SB, BLOCK_K=128, scale="weight"))
    assert rel_err(a, b.float()) <= 2e-3


@pytest.mark.parametrize("kind,bits,group,k,block_k", [
    ("pot", 3, 128, 512, 128),   # whole K tiles: unpredicated loads, clamped rows (M, N not tile multiples)
    ("pot", 2, 64, 300, 128),    # partial last tile (masked), scale folded into the weights (G < BLOCK_K)
    ("pot", 4, None, 512, 256),  # two runs per MMA lane (a = 1 in mma_tile.tile_k), per-channel
    ("int", 4, 128, 384, 128), ("int", 3, 32, 260, 128), ("int", 8, 128, 256, 256)])
def test_fragment_k_order_sums_what_natural_order_sums(kind, bits, group, k, block_k):
    """``k_order: "frag"`` (decoded columns in the MMA operand's order, x loaded in the same order) adds
    the same exact products as natural order; only the summation order, hence the last fp16 bit, differs."""
    packed = make_weight(kind, bits, group, 45, k)
    x = torch.randn(5, k, device=DEVICE).to(F16)
    cfg = dict(SB, BLOCK_N=32, BLOCK_K=block_k, split=2)
    frag = run(packed, x, regime="small_batch", config=dict(cfg, k_order="frag"))
    natural = run(packed, x, regime="small_batch", config=dict(cfg, k_order="natural"))
    assert rel_err(frag, natural.float()) <= 2e-3
    assert rel_err(frag, reference(packed, x)) <= 1e-2


@triton.jit
def _frag_columns(out_ptr, BLOCK_K: tl.constexpr):
    tl.store(out_ptr + tl.arange(0, BLOCK_K), tile_k(1024, BLOCK_K, True))


def test_fragment_k_order_is_a_permutation_of_each_tile():
    """``tile_k``: each K tile's columns are a permutation of its k, and in the MMA lane order (column
    ``16c + 8h + 2t + l``) lane ``t`` holds run ``t`` of the tile (k // 32 == t) for every c, h, l."""
    for bk in (128, 256):
        out = torch.empty(bk, dtype=torch.int32, device=DEVICE)
        _frag_columns[(1,)](out, BLOCK_K=bk)
        k = out.cpu() - 1024
        assert sorted(k.tolist()) == list(range(bk))
        j = torch.arange(bk)
        assert torch.equal((k % 128) // 32, (j // 2) % 4)  # lane t of the quad owns run t of each 128


@triton.jit
def _group_values(sc_ptr, sz_ptr, s_out, s4_out, z_out, k0, N, GROUP_RUNS: tl.constexpr, WORDS: tl.constexpr,
                  BN: tl.constexpr):
    offs = tl.arange(0, BN)
    mask = offs < N
    s = word_scale(tile_word(sc_ptr, k0 // 32, offs, mask, N, GROUP_RUNS, True, WORDS), offs, True, WORDS)
    sz = tile_word(sz_ptr, k0 // 32, offs, mask, N, GROUP_RUNS, False, True)
    tl.store(s_out + offs, s, mask=mask)
    tl.store(s4_out + offs, word_scale(sz, offs, False, True), mask=mask)
    tl.store(z_out + offs, word_zero(sz), mask=mask)


@pytest.mark.parametrize("n,words", [(44, True), (46, True), (44, False), (37, False)])
def test_group_values_from_words_are_the_stored_values(n, words):
    """``tile_word`` / ``word_scale`` / ``word_zero``: every row of every group gets exactly its stored fp16
    scale, from the scale words (two rows a word) or alone, and its scale and uint8 zero point from the int
    ``[scale | zero]`` words."""
    scales = torch.randn(5, n, device=DEVICE).half()
    zeros = torch.randint(0, 256, (5, n), dtype=torch.uint8, device=DEVICE)
    sz = scale_zero_words(scales, zeros)
    for g in range(5):
        s, s4, z = (torch.full((n,), float("nan"), device=DEVICE) for _ in range(3))
        _group_values[(1,)](scales, sz, s, s4, z, g * 64 + 32, n, GROUP_RUNS=2, WORDS=words, BN=64)
        assert torch.equal(s, scales[g].float()) and torch.equal(s4, scales[g].float()), g
        assert torch.equal(z, zeros[g].float()), g


def test_scale_zero_words_layout_and_cache():
    """``scale_zero_words``: scale bits in bits 0–15, the zero point in 16–23, nothing above. ``Packed.tile_scales``
    builds them once per weight (a second call, through a new ``Packed``, returns the same tensor) and again when
    the zero points change in place or the scales are replaced; inference tensors (no version counter) work too.
    The cache attaches nothing to the caller's tensors (they still pickle) and forgets a weight with its tensor."""
    packed = make_weight("int", 4, 64, 40, 256)
    w = scale_zero_words(packed.scales, packed.zeros).long() & 0xFFFFFFFF
    assert torch.equal(w & 0xFFFF, packed.scales.view(torch.int16).long() & 0xFFFF)
    assert torch.equal((w >> 16) & 0xFF, packed.zeros.long()) and not (w >> 24).any()

    def tile_scales(scales, zeros):
        return Packed("int", packed.qweight, scales, zeros, 4, 64, 256).tile_scales

    zeros = packed.zeros.clone()
    first = tile_scales(packed.scales, zeros)
    assert tile_scales(packed.scales, zeros) is first
    zeros[0, 0] ^= 1
    changed = tile_scales(packed.scales, zeros)
    assert changed is not first and torch.equal(changed, scale_zero_words(packed.scales, zeros))
    scales = packed.scales.clone()
    scales[1, 2] = 7.0
    assert torch.equal(tile_scales(scales, zeros), scale_zero_words(scales, zeros))
    with torch.inference_mode():  # inference tensors track no versions: built once, kept
        frozen = packed.zeros.clone()
    first = tile_scales(packed.scales, frozen)
    assert tile_scales(packed.scales, frozen) is first and torch.equal(first, scale_zero_words(packed.scales, frozen))
    assert Packed("pot", packed.qweight, packed.scales, None, 4, 64, 256).tile_scales is packed.scales
    torch.save(zeros, io.BytesIO())  # nothing unpicklable attached to the caller's tensor
    held = len(packed_module._SCALE_ZERO)
    del zeros, frozen
    gc.collect()
    assert len(packed_module._SCALE_ZERO) == held - 2  # dropped with their zero-point tensors


def test_word_loads_only_for_whole_aligned_words():
    """``launch.word_loads``: PoT scales load as words with N even and the scales 4-byte aligned, or alone (a
    misaligned view of the scales still gives the right result, through that fallback; int ``[scale | zero]``
    words are built aligned whatever the scales' alignment)."""
    for kind, bits in (("pot", 3), ("int", 4)):
        packed = make_weight(kind, bits, 64, 132, 256)
        x = torch.randn(5, 256, device=DEVICE).to(F16)
        ref = reference(packed, x)
        odd = torch.empty(packed.scales.numel() + 1, dtype=F16, device=DEVICE)[1:].view_as(packed.scales)
        odd.copy_(packed.scales)
        assert odd.data_ptr() % 4 == 2
        zeros = packed.zeros if kind == "int" else None
        for scales, words in ((packed.scales, True), (odd, False)):
            assert launch.word_loads(Packed(kind, packed.qweight, scales, zeros, bits, 64, 256)) == words
            fn = int_matmul_triton if kind == "int" else pot_matmul_triton
            args = (scales, zeros) if kind == "int" else (scales,)
            y = fn(x, packed.qweight, *args, None, bits, 64, 256, regime="small_batch", config=dict(SB, BLOCK_K=128))
            assert rel_err(y, ref) <= 1e-2
    pot = make_weight("pot", 3, 64, 45, 256)  # N = 45: no whole words
    assert not launch.word_loads(Packed("pot", pot.qweight, pot.scales, None, 3, 64, 256))


def test_small_batch_four_rows_per_thread_vs_reference():
    """Swap-AB with BLOCK_N 128 on one warpgroup (four tile rows per thread), split K, scale on the accumulator."""
    for kind, bits in (("int", 4), ("pot", 3)):
        packed = make_weight(kind, bits, 128, 132, 512)
        x = torch.randn(9, 512, device=DEVICE).to(F16)
        cfg = dict(SB, BLOCK_N=128, BLOCK_K=128, split=2)
        assert rel_err(run(packed, x, regime="small_batch", config=cfg), reference(packed, x)) <= 1e-2


@pytest.mark.parametrize("kind,bits,n", [("pot", 3, 132), ("int", 4, 132), ("int", 2, 45), ("pot", 2, 45)])
def test_gemm_whole_k_tiles_vs_reference(kind, bits, n):
    """gemm with K a multiple of BLOCK_K: x copied without predicates, its rows past M clamped (never stored);
    per-weight PoT scales loaded as words where N is even, alone otherwise; int ``[scale | zero]`` words."""
    packed = make_weight(kind, bits, 64, n, 512)
    x = torch.randn(70, 512, device=DEVICE).to(F16)
    assert rel_err(run(packed, x, regime="gemm", config=GEMM), reference(packed, x)) <= 1e-2


def test_small_batch_split_k_deterministic():
    packed = make_weight("int", 4, 32, 48, 320)
    x = torch.randn(9, 320, device=DEVICE).to(F16)
    cfg = dict(SB, split=4)
    assert torch.equal(run(packed, x, regime="small_batch", config=cfg),
                       run(packed, x, regime="small_batch", config=cfg))


@pytest.mark.parametrize("kind,bits,group,k,m,cfg", [
    ("pot", 4, 64, 333, 20, dict(SB, BLOCK_K=128, schedule="stream", programs=4)),  # a program spans two tiles
    ("int", 3, 32, 333, 20, dict(SB, schedule="stream", programs=5)),               # tiles shared by two programs
    ("pot", 2, 128, 300, 5, dict(SB, schedule="stream", programs=1)),               # one program, every tile whole
    ("pot", 3, None, 260, 17, dict(SB, BLOCK_N=32, schedule="stream", programs=64)),  # a program per K step
    ("int", 4, 128, 512, 9, dict(SB, BLOCK_K=128, k_order="frag", schedule="stream", programs=3))])
def test_stream_k_vs_reference_and_deterministic(kind, bits, group, k, m, cfg):
    """Stream-K (each program the same share of all tiles' K steps; shared tiles' partials added in
    program order by the last to arrive) gives the reference result, bit-identical run to run."""
    packed = make_weight(kind, bits, group, 45, k)
    for dtype in (F16, BF16):
        x = torch.randn(m, k, device=DEVICE).to(dtype)
        bias = torch.randn(45, device=DEVICE)
        a = run(packed, x, bias, regime="small_batch", config=cfg)
        assert rel_err(a, reference(packed, x, bias)) <= 1e-2, dtype
        assert torch.equal(a, run(packed, x, bias, regime="small_batch", config=cfg)), dtype


def test_stream_parts_bounds_the_programs_on_one_tile():
    """``launch.stream_parts`` is exactly the most programs any tile meets when programs take equal runs of
    units (so the partial buffer is never short and never oversized)."""
    for k_steps in range(1, 40):
        for per in range(1, 50):
            worst = max((t * k_steps + k_steps - 1) // per - (t * k_steps) // per + 1 for t in range(3 * per))
            assert launch.stream_parts(k_steps, per) == worst, (k_steps, per)


def test_bad_configs_raise_before_launch():
    packed = make_weight("pot", 4, 32, 16, 64)
    x = torch.randn(4, 64, device=DEVICE).to(F16)
    with pytest.raises(ValueError, match="unknown small_batch config keys"):
        run(packed, x, regime="small_batch", config=dict(SB, LOADER="sliced"))
    with pytest.raises(ValueError, match="BLOCK_K must be a power of two"):
        run(packed, x, regime="small_batch", config=dict(SB, BLOCK_K=96))
    with pytest.raises(ValueError, match="gemm BLOCK_K must be a power of two >= 128"):
        run(packed, x, regime="gemm", config=dict(GEMM, BLOCK_K=64))
    with pytest.raises(ValueError, match="k_order 'frag' needs BLOCK_K a multiple of 128"):
        run(packed, x, regime="small_batch", config=dict(SB, k_order="frag"))
    with pytest.raises(ValueError, match="k_order must be 'frag' or 'natural'"):
        run(packed, x, regime="small_batch", config=dict(SB, BLOCK_K=128, k_order="mma"))
    with pytest.raises(ValueError, match="BLOCK_M"):
        run(packed, x, regime="small_batch", config=dict(SB, BLOCK_M=8))
    with pytest.raises(ValueError, match="scale must be"):
        run(packed, x, regime="small_batch", config=dict(SB, scale="both"))
    with pytest.raises(ValueError, match="schedule must be 'split' or 'stream'"):
        run(packed, x, regime="small_batch", config=dict(SB, schedule="diagonal"))
    with pytest.raises(ValueError, match="reduce 'fused' only"):
        run(packed, x, regime="small_batch", config=dict(SB, schedule="stream", reduce="kernel"))
    x1 = x[:1]
    with pytest.raises(ValueError, match="gemv BLOCK_R must be a power of two"):
        run(packed, x1, regime="gemv", config={"BLOCK_N": 32, "BLOCK_R": 3})
    with pytest.raises(ValueError, match="gemv BLOCK_N must be a power of two >= 16"):
        run(packed, x1, regime="gemv", config={"BLOCK_N": 8})
    with pytest.raises(ValueError, match="unknown gemv config keys"):
        run(packed, x1, regime="gemv", config={"BLOCK_N": 32, "BLOCK_K": 64})


def test_no_dequant_fallback_in_the_tables():
    """No table entry sends any M to dequant + cuBLAS (no committed measurement shows it faster),
    yet the regime can still be forced."""
    table = json.loads(configs.DEFAULT_TABLE.read_text())
    for gpu in [g for g in table if g != "_doc"]:
        for key, entry in table[gpu].get("dispatch", {}).items():
            assert "dequant_mm_min_m" not in entry, (gpu, key)
    packed = make_weight("pot", 4, 128, 64, 256)
    w = api.Packed("pot", packed.qweight, packed.scales, None, 4, 128, 256)
    d = configs.lookup("dispatch", "pot", 4, 2, 64, 256)
    low, top = int(d["gemv_max_m"]), int(d["small_batch_max_m"])
    assert [api.pick_regime(w, m) for m in (1, low, low + 1, top, top + 1, 4096)] == \
        ["gemv", "gemv", "small_batch", "small_batch", "gemm", "gemm"]
    x = torch.randn(3, 256, device=DEVICE).to(F16)
    assert rel_err(run(packed, x, regime="dequant_mm"), reference(packed, x)) <= 1e-2


@pytest.mark.parametrize("gpu", ["default", "NVIDIA H100 80GB HBM3", "NVIDIA H200"])
def test_table_has_every_bucket_code_and_bits(gpu):
    """Every M bucket × code × bits resolves to a valid config on each GPU (its own entry or the default)."""
    for kind, bits in CODES:
        for m in configs.M_BUCKETS:
            d = configs.lookup("dispatch", kind, bits, m, 4096, 4096, device=gpu)
            regime = "gemv" if m <= d["gemv_max_m"] else ("small_batch" if m <= d["small_batch_max_m"] else "gemm")
            cfg = configs.lookup(regime, kind, bits, m, 4096, 4096, device=gpu)
            if regime == "gemv":
                gemv.gemv_tiles(cfg)
            else:
                launch.mma_tiles(regime, cfg)
                if regime == "small_batch":
                    assert min(m, 16) <= cfg["BLOCK_M"] <= max(m, 16), (kind, bits, m, cfg)


@pytest.mark.parametrize("kind,bits,group", [("pot", 4, 32), ("pot", 3, 64), ("pot", 2, None), ("int", 2, 32),
                                              ("int", 3, 64), ("int", 4, None), ("int", 8, 32)])
def test_join_tree_and_broadcast_expansion_identical(kind, bits, group):
    """The compiled kernels' in-thread join-tree expansion and the interpreter's broadcast one
    give identical bits (scale on the accumulator and folded into the weights)."""
    packed = make_weight(kind, bits, group, 20, 100)
    x = torch.randn(3, 100, device=DEVICE).to(F16)
    for scale in ("acc", "weight"):
        for block_k in (64, 128):  # natural and fragment column order
            cfg = dict(SB, BLOCK_N=32, BLOCK_K=block_k, scale=scale)
            a = run(packed, x, regime="small_batch", config=dict(cfg, expand="join"))
            b = run(packed, x, regime="small_batch", config=dict(cfg, expand="broadcast"))
            assert torch.equal(a, b), (scale, block_k)
            assert rel_err(a, reference(packed, x)) <= 1e-2

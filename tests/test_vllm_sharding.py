"""Tensor-parallel pieces of packed weights, without an engine: every rank's piece decodes to exactly
its columns (row-parallel) or rows (column-parallel, merged) of the unsharded decode.

The row-parallel pieces are built as the vLLM method builds them: from every row (a rank whose K range
is not a whole number of 32-code units) or from the rows an engine's loader narrows (``rows / tp`` per
rank, when it is), with the scales of every group.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from potkernels.format import IntConfig, PoTConfig, packed_rows, quantize_int, quantize_pot
from potkernels.integrations.sharding import (even_k_ranges, local_group_size, rank_piece, rows_shard_cleanly, slice_k,
                                              slice_n)

CODES = [PoTConfig(2, 128), PoTConfig(3, 128), PoTConfig(4, 64), PoTConfig(3, None), PoTConfig(4, 256),
         IntConfig(4, 128), IntConfig(3, 32), IntConfig(2, None), IntConfig(8, 64)]
# K values: SmolLM2 (576 = 4·128 + 64), word-misaligned per-rank splits (600/8 = 75, 504/4 = 126), a
# partial last group at every G (840), K < G (96).
KS = [576, 600, 504, 840, 96]


def _quantize(cfg, n, k):
    w = torch.randn(n, k) * torch.logspace(-2, 1, k)  # varied column scales: scales differ per group
    return quantize_pot(w, cfg) if cfg.kind == "pot" else quantize_int(w, cfg)


def _engine_piece(q, tp, rank):
    """What the vLLM method builds on ``rank``: the loader narrows qweight rows when the split is clean."""
    k0, k1 = even_k_ranges(q.in_features, tp)[rank]
    zeros = getattr(q, "zeros", None)
    if rows_shard_cleanly(q.in_features, tp):
        rows = packed_rows(k1 - k0, q.config.bits)
        return slice_k(q.config, q.in_features, k0, k1, q.qweight[rank * rows:(rank + 1) * rows], q.scales, zeros,
                       qweight_start=k0)
    return slice_k(q.config, q.in_features, k0, k1, q.qweight, q.scales, zeros)


@pytest.mark.parametrize("cfg", CODES, ids=str)
@pytest.mark.parametrize("k", KS)
def test_row_parallel_pieces_are_bit_exact(cfg, k):
    q = _quantize(cfg, 8, k)
    for dtype in (torch.float16, torch.bfloat16) if k == 600 else (torch.float16,):
        full = q.dequantize(dtype)
        for tp in (2, 3, 4, 8):
            if k % tp:
                continue
            for rank, (k0, k1) in enumerate(even_k_ranges(k, tp)):
                piece = _engine_piece(q, tp, rank)
                piece.weight.validate()
                assert piece.lead == k0 % 32
                got = piece.dequantize(dtype)
                assert torch.equal(got, full[:, k0:k1]), (tp, rank)
                # the matmul the engine runs (activations padded with `lead` zeros) adds up to the full one
                x = torch.randn(3, k1 - k0)
                xp = torch.nn.functional.pad(x, (piece.lead, 0))
                ref = x @ full[:, k0:k1].float().t()
                assert torch.allclose(xp @ piece.weight.dequantize(dtype).float().t(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cfg", CODES, ids=str)
def test_column_parallel_and_merged_shards_are_bit_exact(cfg):
    k = 600
    parts = [_quantize(cfg, n, k) for n in (64, 32, 32)]  # q, k, v of a merged qkv_proj
    merged = type(parts[0])(**{t: torch.cat([p.tensors()[t] for p in parts], 1) for t in parts[0].tensors()},
                            in_features=k, config=cfg)
    full = merged.dequantize(torch.float16)
    for tp in (2, 4, 8):
        offset = 0
        for p in parts:  # each rank holds its N-slice of each merged part, as vLLM's qkv loader writes it
            n = p.out_features // tp
            for rank in range(tp):
                shard = slice_n(p, rank * n, (rank + 1) * n)
                assert torch.equal(shard.dequantize(torch.float16), full[offset + rank * n:offset + (rank + 1) * n])
            offset += p.out_features


@settings(max_examples=25, deadline=None)
@given(units=st.integers(1, 12), extra=st.integers(0, 31), a=st.integers(0, 10_000), b=st.integers(1, 10_000),
       cfg=st.sampled_from(CODES))
def test_any_column_range_is_bit_exact(units, extra, a, b, cfg):
    k = units * 32 + extra
    k0 = a % k
    k1 = k0 + 1 + b % (k - k0)
    q = _quantize(cfg, 8, k)
    assert torch.equal(rank_piece(q, k0, k1).dequantize(torch.float16), q.dequantize(torch.float16)[:, k0:k1])


def test_regrouping_and_clean_splits():
    assert local_group_size(128, 192) == 64 and local_group_size(128, 256) == 128 and local_group_size(None, 75) is None
    assert local_group_size(256, 96) == 32
    assert rows_shard_cleanly(576, 3) and not rows_shard_cleanly(576, 8) and not rows_shard_cleanly(600, 7)
    # SmolLM2 o_proj at TP = 3: 192 columns per rank, G = 128 → local groups of 64
    q = _quantize(PoTConfig(3, 128), 16, 576)
    assert [rank_piece(q, k0, k1).weight.config.group_size for k0, k1 in even_k_ranges(576, 3)] == [128, 64, 128]


def test_bad_ranges_are_refused():
    q = _quantize(PoTConfig(3, 128), 8, 96)
    with pytest.raises(ValueError, match="does not split evenly"):
        even_k_ranges(100, 3)
    with pytest.raises(ValueError, match="not inside K"):
        rank_piece(q, 64, 97)
    with pytest.raises(ValueError, match="32-code unit"):
        slice_k(q.config, 96, 40, 96, q.qweight, q.scales, qweight_start=40)
    with pytest.raises(ValueError, match="rows"):
        slice_k(q.config, 96, 32, 96, q.qweight[:3], q.scales, qweight_start=32)
    with pytest.raises(ValueError, match="not inside N"):
        slice_n(q, 4, 9)

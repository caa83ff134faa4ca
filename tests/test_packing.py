"""Bit-plane packing: exact round trips and the documented word layout (FORMAT.md §4)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from potkernels.format.packing import pack_codes, packed_rows, plane_row_offsets, plane_widths, unpack_codes


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 130), bits=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_round_trip(n, k, bits, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.int32)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.int32
    assert tuple(packed.shape) == (packed_rows(k, bits), n) == (-(-k // 32) * bits, n)
    out = unpack_codes(packed, bits, k)
    assert out.dtype == torch.int32 and out.is_contiguous()
    assert torch.equal(out, codes)


@pytest.mark.parametrize("bits,widths", [(1, (1,)), (2, (2,)), (3, (2, 1)), (4, (4,)), (5, (4, 1)),
                                         (7, (4, 2, 1)), (8, (8,))])
def test_plane_widths(bits, widths):
    assert plane_widths(bits) == widths


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_word_layout(bits):
    """Code k of column n sits in plane word [row0 + k // epw, n] at shift (k % epw)·width."""
    n, k = 3, 70
    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.int32)
    packed = pack_codes(codes, bits).to(torch.int64) & 0xFFFFFFFF
    for row0, width, bit in plane_row_offsets(k, bits):
        epw = 32 // width
        for kk in range(k):
            word = packed[row0 + kk // epw]
            got = (word >> ((kk % epw) * width)) & ((1 << width) - 1)
            assert torch.equal(got, (codes[:, kk].to(torch.int64) >> bit) & ((1 << width) - 1))


def test_padding_codes_are_zero():
    codes = torch.full((4, 33), 7, dtype=torch.int32)
    packed = pack_codes(codes, 3)
    full = unpack_codes(packed, 3, 64)  # read the padded K = 64 columns
    assert torch.equal(full[:, :33], codes) and not full[:, 33:].any()

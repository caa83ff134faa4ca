"""PoTLinear / IntLinear: forward equals F.linear on the decoded weight; packed dtypes survive casts."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from potkernels import IntConfig, IntLinear, PoTConfig, PoTLinear, sqnr_db

CASES = [(PoTLinear, PoTConfig(4, 32)), (PoTLinear, PoTConfig(3, None)), (PoTLinear, PoTConfig(2, 64)),
         (IntLinear, IntConfig(4, 32)), (IntLinear, IntConfig(8, 64))]


@pytest.mark.parametrize("cls,cfg", CASES)
@pytest.mark.parametrize("act", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_equals_decoded_linear(cls, cfg, act):
    lin = nn.Linear(100, 48)  # K = 100: partial last group, K not a multiple of 32
    layer = cls.from_float(lin, cfg)
    x = torch.randn(3, 5, 100).to(act)
    wdt = torch.bfloat16 if act == torch.bfloat16 else torch.float16
    ref = F.linear(x, layer.dequantize(wdt).to(act), layer.bias.to(act))
    y = layer(x)
    assert y.dtype == act and y.shape == (3, 5, 48)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("cls,cfg", CASES[:1] + CASES[3:4])
def test_conv1d_orientation(cls, cfg):
    """GPT-2's Conv1D stores [in, out]; the packed layer computes the same function."""
    conv = Conv1D(48, 64)  # nf=48 outputs, nx=64 inputs
    nn.init.normal_(conv.weight, std=0.02)
    nn.init.normal_(conv.bias, std=0.02)
    layer = cls.from_float(conv, cfg)
    assert (layer.out_features, layer.in_features) == (48, 64)
    assert sqnr_db(conv.weight.t(), layer.dequantize()) > 10  # the decoded weight is W = conv.weight.T
    x = torch.randn(4, 64)
    assert torch.equal(layer(x), F.linear(x, layer.dequantize().float(), layer.bias))
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    assert torch.equal(cls.from_float(lin, cfg).dequantize(), layer.dequantize())


def test_no_bias_and_state_dict():
    layer = PoTLinear.from_float(nn.Linear(64, 32, bias=False), PoTConfig(4, 32))
    sd = layer.state_dict()
    assert set(sd) == {"qweight", "scales"}
    assert (sd["qweight"].dtype, sd["scales"].dtype) == (torch.int32, torch.float16)
    assert layer(torch.randn(2, 64)).shape == (2, 32)


@pytest.mark.parametrize("cls,cfg", [CASES[0], CASES[3]])
def test_half_and_bf16_keep_packed_tensors(cls, cfg):
    layer = cls.from_float(nn.Linear(64, 32), cfg)
    before = {n: getattr(layer, n).clone() for n in cls.tensor_names}
    model = nn.Sequential(layer)
    for cast in (model.half, model.bfloat16, model.float, lambda: model.to(torch.float64)):
        cast()
        for n, t in before.items():
            assert getattr(layer, n).dtype == t.dtype
            assert torch.equal(getattr(layer, n), t)  # bit-identical: no lossy round trip through bf16
    model.half()
    assert layer.bias.dtype == torch.float16  # float parameters do follow the cast
    y = model(torch.randn(2, 64, dtype=torch.float16))
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_from_weight_and_packed_view():
    lin = nn.Linear(64, 32)
    layer = PoTLinear.from_float(lin, PoTConfig(3, 32))
    again = PoTLinear.from_weight(layer.packed, layer.bias)
    assert torch.equal(again.dequantize(), layer.dequantize())
    x = torch.randn(2, 64)
    assert torch.equal(again(x), layer(x))

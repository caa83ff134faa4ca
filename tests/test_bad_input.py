"""Every bad input gets a clear error (or, where the format defines it, a finite result)."""
import pytest
import torch
from torch import nn

from potkernels import (IntConfig, IntLinear, PoTConfig, PoTLinear, dequantize, int_matmul, pot_matmul,
                        quantize_model, quantize_weight)
from potkernels.format import pack_codes, quantize_pot, unpack_codes

from tiny_models import MODELS

CFGS = [PoTConfig(4, 32), IntConfig(4, 32)]


@pytest.mark.parametrize("cfg", CFGS, ids=str)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_weights(cfg, bad):
    w = torch.randn(8, 64)
    w[3, 5] = bad
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize_weight(w, cfg)
    lin = nn.Linear(64, 8)
    with torch.no_grad():
        lin.weight[0, 0] = bad
    with pytest.raises(ValueError, match="NaN/Inf"):
        (PoTLinear if cfg.kind == "pot" else IntLinear).from_float(lin, cfg)


@pytest.mark.parametrize("make,bits", [(PoTConfig, 1), (PoTConfig, 5), (PoTConfig, 8), (IntConfig, 1),
                                       (IntConfig, 5), (IntConfig, 16), (PoTConfig, 4.0), (IntConfig, "4")])
def test_unsupported_bits(make, bits):
    with pytest.raises(ValueError, match="bits"):
        make(bits=bits)


@pytest.mark.parametrize("make", [PoTConfig, IntConfig])
@pytest.mark.parametrize("g", [0, -32, 48, 100, 512, "128", 128.0, True])
def test_bad_group_size(make, g):
    with pytest.raises(ValueError, match="group_size"):
        make(group_size=g)


@pytest.mark.parametrize("cfg", CFGS, ids=str)
def test_weight_dtype_and_shape(cfg):
    with pytest.raises(TypeError, match="floating"):
        quantize_weight(torch.randint(-3, 3, (8, 64)), cfg)
    with pytest.raises(TypeError, match="floating"):
        quantize_weight(torch.ones(8, 64, dtype=torch.bool), cfg)
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.randn(64), cfg)
    with pytest.raises(ValueError, match="empty"):
        quantize_weight(torch.randn(0, 64), cfg)
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize_weight([[1.0, 2.0]], cfg)
    with pytest.raises(TypeError, match="PoTConfig or IntConfig"):
        quantize_weight(torch.randn(8, 64), {"bits": 4})


def test_activation_dtype_and_width():
    layer = PoTLinear.from_float(nn.Linear(64, 16), PoTConfig(4, 32))
    for x in (torch.randint(0, 3, (2, 64)), torch.randn(2, 64, dtype=torch.float64)):
        with pytest.raises(TypeError, match="activations"):
            layer(x)
    with pytest.raises(ValueError, match="64 features"):
        layer(torch.randn(2, 63, dtype=torch.float16))
    with pytest.raises(ValueError, match="64 features"):
        pot_matmul(torch.tensor(1.0), layer.packed)
    ilayer = IntLinear.from_float(nn.Linear(64, 16), IntConfig(4, 32))
    with pytest.raises(ValueError, match="64 features"):
        int_matmul(torch.randn(3, 32), ilayer.packed)


def test_bad_backend_and_decode_dtype():
    w = quantize_weight(torch.randn(16, 64), PoTConfig(4, 32))
    with pytest.raises(ValueError, match="backend"):
        pot_matmul(torch.randn(2, 64), w, backend="cuda")
    with pytest.raises(TypeError, match="float16 or torch.bfloat16"):
        dequantize(w, torch.float32)
    with pytest.raises(TypeError, match="float16 or torch.bfloat16"):
        w.dequantize(torch.float32)
    with pytest.raises(TypeError, match="PoTWeight or IntWeight"):
        dequantize(torch.randn(4, 4))


def test_bad_scales():
    w = torch.randn(16, 64)
    cfg = PoTConfig(4, 32)
    with pytest.raises(ValueError, match="scales must be"):
        quantize_pot(w, cfg, scales=torch.ones(16, 3))
    with pytest.raises(ValueError, match="finite"):
        quantize_pot(w, cfg, scales=torch.full((16, 2), float("nan")))
    q = quantize_pot(w, cfg)
    for bad in (-1.0, -0.0, float("inf")):  # not a v3 top level (zero and subnormals are)
        q.scales.fill_(bad)
        with pytest.raises(ValueError, match="finite and ≥ \\+0"):
            q.validate()
        with pytest.raises(ValueError, match="finite and ≥ \\+0"):
            PoTLinear.from_weight(q)


def test_zero_and_tiny_weights_are_finite():
    """All-zero / fp32-subnormal weights are legal input: below fp16's resolution they decode to zeros."""
    w = torch.zeros(4, 64)
    w[1] = 1e-30
    for cfg in (PoTConfig(2, 32), PoTConfig(4, None)):
        d = quantize_weight(w, cfg).dequantize()
        assert torch.isfinite(d).all() and torch.equal(d.view(torch.int16), torch.zeros(4, 64, dtype=torch.int16))
    d = quantize_weight(w, IntConfig(4, 32)).dequantize()
    assert torch.isfinite(d).all() and d.abs().max() <= 2.0**-10


def test_partial_group_is_accepted():
    layer = PoTLinear.from_float(nn.Linear(40, 8), PoTConfig(4, 128))  # K = 40 < G
    assert layer.scales.shape == (1, 8)
    assert layer(torch.randn(3, 40)).shape == (3, 8)


def test_bad_codes_for_packing():
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        pack_codes(torch.tensor([[0, 8]]), "pot", 3)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        pack_codes(torch.tensor([[-1, 0]]), "int", 3)
    with pytest.raises(TypeError, match="integer"):
        pack_codes(torch.zeros(2, 2), "pot", 3)
    with pytest.raises(ValueError, match="no v2 layout"):
        pack_codes(torch.zeros(2, 2, dtype=torch.int32), "int", 9)
    with pytest.raises(ValueError, match="packed codes must be int32"):
        unpack_codes(torch.zeros(3, 2, dtype=torch.int32), "pot", 3, 64)


def test_packed_weight_does_not_fit_layer():
    q = quantize_weight(torch.randn(16, 64), PoTConfig(4, 32))
    layer = PoTLinear(64, 16, PoTConfig(3, 32))
    with pytest.raises(ValueError, match="does not fit"):
        layer.load_packed(q)
    with pytest.raises(TypeError, match="PoTConfig"):
        PoTLinear(64, 16, IntConfig(4, 32))


def test_quantize_model_with_nothing_to_do():
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_model(MODELS["llama"](), PoTConfig(4, 32), skip=("*",))


@pytest.mark.parametrize("cfg", CFGS, ids=str)
def test_quantize_model_names_bad_layer_and_swaps_nothing(cfg):
    model = MODELS["llama"]()
    bad = "model.layers.1.mlp.down_proj"
    with torch.no_grad():
        model.get_submodule(bad).weight[2, 7] = float("nan")
    with pytest.raises(ValueError, match=rf"layer '{bad}'.*NaN/Inf.*no layer was quantized"):
        quantize_model(model, cfg)
    assert not any(isinstance(m, (PoTLinear, IntLinear)) for m in model.modules())
    assert not hasattr(model, "quantization_report")


def test_quantize_model_params_error_swaps_nothing():
    model = MODELS["llama"]()

    def params(name, module):
        if name.endswith("layers.1.self_attn.o_proj"):
            return {"scales": torch.ones(3, 3)}  # wrong shape
        return {}

    with pytest.raises(ValueError, match="layer 'model.layers.1.self_attn.o_proj'"):
        quantize_model(model, PoTConfig(4, 32), params=params)
    assert not any(isinstance(m, PoTLinear) for m in model.modules())

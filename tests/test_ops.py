"""The registered custom ops: Triton backend on CPU (interpreter), opcheck, torch.compile of a GPT-2."""
import pytest
import torch

import potkernels
from potkernels import IntConfig, PoTConfig, ops
from potkernels.format import quantize_int, quantize_pot
from potkernels.kernels import configs

DEVICE = "cuda" if torch.cuda.is_available() and not configs.interpreting() else "cpu"


def _weights(n=48, k=200):
    w = torch.randn(n, k)
    return [quantize_pot(w, PoTConfig(4, 64)).to(DEVICE), quantize_pot(w, PoTConfig(2, None)).to(DEVICE),
            quantize_int(w, IntConfig(4, 64)).to(DEVICE), quantize_int(w, IntConfig(3, 32)).to(DEVICE)]


def _matmul(x, w, bias, backend):
    fn = ops.pot_matmul if isinstance(w, potkernels.PoTWeight) else ops.int_matmul
    return fn(x, w, bias, backend=backend)


@pytest.mark.parametrize("shape", [(1, 200), (2, 3, 200)])
def test_triton_backend_matches_torch_backend(shape):
    """``backend="triton"`` on the test device (CPU: interpreter) vs the reference path, any leading dims."""
    bias = torch.randn(48, device=DEVICE)
    for w in _weights():
        x = torch.randn(*shape, device=DEVICE, dtype=torch.float16)
        ref = _matmul(x, w, bias, "torch").float()
        out = _matmul(x, w, bias, "triton")
        assert out.shape == (*shape[:-1], 48) and out.dtype == x.dtype
        assert float((out.float() - ref).norm() / ref.norm()) <= 1e-2
        for dtype in (torch.float16, torch.bfloat16):
            a, b = ops.dequantize(w, dtype, backend="triton"), ops.dequantize(w, dtype, backend="torch")
            assert torch.equal(a.view(torch.int16), b.view(torch.int16))


def test_layer_backend_triton():
    lin = torch.nn.Linear(200, 48).to(DEVICE)
    layer = potkernels.PoTLinear.from_float(lin, PoTConfig(3, 32))
    x = torch.randn(1, 200, device=DEVICE, dtype=torch.float32)  # fp32 activations: GEMV takes them as is
    ref = layer(x)
    layer.backend = "triton"
    out = layer(x)
    assert out.dtype == torch.float32
    assert float((out - ref).norm() / ref.norm()) <= 1e-2


def test_opcheck_all_ops():
    """Schema, fake (meta) kernel and dispatch consistency of the four custom ops."""
    x = torch.randn(3, 200, device=DEVICE, dtype=torch.float16)
    bias = torch.randn(48, device=DEVICE, dtype=torch.float16)
    pot, _, iw, _ = _weights()
    g = pot.group_size
    cases = [
        (torch.ops.potkernels.pot_matmul.default, (x, pot.qweight, pot.scales, bias, 4, g, 200)),
        (torch.ops.potkernels.int_matmul.default, (x, iw.qweight, iw.scales, iw.zeros, None, 4, g, 200)),
        (torch.ops.potkernels.pot_dequantize.default, (pot.qweight, pot.scales, 4, g, 200, torch.bfloat16)),
        (torch.ops.potkernels.int_dequantize.default, (iw.qweight, iw.scales, iw.zeros, 4, g, 200, torch.float16)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_quantized_gpt2_fullgraph():
    """A tiny random GPT-2 quantized with quantize_model compiles with fullgraph=True and matches eager."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=96, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    potkernels.quantize_model(model, PoTConfig(4, 32))
    model.to(DEVICE)
    ids = torch.randint(0, 96, (2, 16), device=DEVICE)

    def logits(m, i):
        return m(input_ids=i, use_cache=False).logits

    with torch.no_grad():
        eager = logits(model, ids)
        torch._dynamo.reset()
        compiled = torch.compile(logits, fullgraph=True)
        out = compiled(model, ids)
    assert torch.allclose(out, eager, atol=1e-3, rtol=1e-3)

"""quantize_model on tiny GPT-2 (Conv1D) and Llama (nn.Linear) models: logits equal a float model
holding the decoded weights; lm_head and tied embeddings stay float."""
import copy

import pytest
import torch
from torch import nn

from potkernels import IntConfig, IntLinear, PoTConfig, PoTLinear, quantize_model
from potkernels.integrations import dequantize_model, eligible_linears

from tiny_models import MODELS, input_embeddings_tied, tokens

CONFIGS = [PoTConfig(4, 32), PoTConfig(3, 64), PoTConfig(2, None), IntConfig(4, 32), IntConfig(3, 128)]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_logits_equal_decoded_float_model(arch, cfg):
    model = MODELS[arch]()
    n_linear = len(list(eligible_linears(model)))
    q = quantize_model(model, cfg)
    cls = PoTLinear if cfg.kind == "pot" else IntLinear
    packed = [m for m in q.modules() if isinstance(m, cls)]
    assert len(packed) == n_linear == len(q.quantization_report) > 0
    assert not isinstance(q.lm_head, (PoTLinear, IntLinear)) and input_embeddings_tied(q)
    twin = dequantize_model(copy.deepcopy(q))
    assert not any(isinstance(m, (PoTLinear, IntLinear)) for m in twin.modules())
    x = tokens()
    with torch.no_grad():
        assert torch.equal(q(x).logits, twin(x).logits)


def test_report_and_skip():
    model = MODELS["llama"]()
    q = quantize_model(model, PoTConfig(4, 32), skip=("lm_head", "down_proj", "model.layers.1.*"))
    names = [r.name for r in q.quantization_report]
    assert names and all("down_proj" not in n and not n.startswith("model.layers.1.") for n in names)
    assert isinstance(q.model.layers[1].self_attn.q_proj, nn.Linear)
    for r in q.quantization_report:
        assert r.bits_per_weight == 4 + 16 / 32 and 0 < r.sqnr_db < 60
    assert q.quantization_skip == ["lm_head", "down_proj", "model.layers.1.*"]


def test_quantized_lm_head_when_asked():
    q = quantize_model(MODELS["llama-untied"](), PoTConfig(4, 32), skip=())
    assert isinstance(q.lm_head, PoTLinear)
    with torch.no_grad():
        assert torch.isfinite(q(tokens()).logits).all()


def test_generate_runs_on_packed_model():
    q = quantize_model(MODELS["llama"](), PoTConfig(4, 32))
    twin = dequantize_model(copy.deepcopy(q))
    ids = tokens(1, 5)
    a = q.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    b = twin.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b) and a.shape == (1, 9)


def test_bf16_model_decodes_to_bf16():
    model = MODELS["llama"]().to(torch.bfloat16)
    q = quantize_model(model, PoTConfig(4, 32))
    assert q.model.layers[0].mlp.up_proj.scales.dtype == torch.float16
    twin = dequantize_model(copy.deepcopy(q))
    assert twin.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    x = tokens()
    with torch.no_grad():
        assert torch.equal(q(x).logits, twin(x).logits)

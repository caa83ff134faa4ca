"""The decoded-weight cache (CPU inference): same logits and generations as the packed reference path."""
import copy

import pytest
import torch

from potkernels import IntConfig, PoTConfig, quantize_model
from potkernels.integrations import cache_decoded_weights

from tiny_models import MODELS, tokens


@pytest.mark.parametrize("arch,cfg", [("llama", PoTConfig(3, 32)), ("gpt2", IntConfig(4, 32))], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cache_is_bit_exact(arch, cfg, dtype):
    q = quantize_model(MODELS[arch]().to(dtype), cfg)
    cached = copy.deepcopy(q)
    assert cache_decoded_weights(cached) == len(q.quantization_report)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(q(x).logits, cached(x).logits)
        assert torch.equal(q(x).logits, cached(x).logits)  # second call uses the cache
    layer = next(m for m in cached.modules() if getattr(m, "cache_decoded", False))
    assert layer._decoded is not None and layer._decoded.dtype == dtype
    prompt = tokens(1, 4)
    a = q.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    b = cached.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
    cache_decoded_weights(cached, enable=False)
    assert layer._decoded is None and not layer.cache_decoded


def test_cache_dropped_on_dtype_change_and_copy():
    q = quantize_model(MODELS["llama"](), PoTConfig(4, 32))
    ref = copy.deepcopy(q).to(torch.bfloat16)
    cache_decoded_weights(q)
    x = tokens()
    with torch.no_grad():
        q(x)
        layer = q.model.layers[0].mlp.up_proj
        assert layer._decoded is not None
        assert copy.deepcopy(q).model.layers[0].mlp.up_proj._decoded is None  # derived data is not copied
        q.to(torch.bfloat16)
        assert layer._decoded is None
        assert torch.equal(q(x).logits, ref(x).logits)


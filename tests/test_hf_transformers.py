"""transformers-native loading: AutoModelForCausalLM.from_pretrained of a potkernels checkpoint equals
load_quantized, save_pretrained writes the same format, quantize-on-load, and plain transformers
(without potkernels imported) refuses the folder naming potkernels instead of loading random weights."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import potkernels as pk
from potkernels.integrations.serialization import QUANT_FILE, CheckpointError

from tiny_models import MODELS, tokens


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def _saved(tmp_path, arch, cfg):
    model = pk.quantize_model(MODELS[arch](), cfg)
    pk.save_quantized(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


@pytest.mark.parametrize("arch,cfg", [("gpt2", pk.PoTConfig(4, 32)), ("llama", pk.PoTConfig(3, 64)),
                                      ("llama-untied", pk.IntConfig(4, None))], ids=str)
def test_from_pretrained_equals_load_quantized(tmp_path, arch, cfg, one_thread):
    model, path = _saved(tmp_path, arch, cfg)
    hf = AutoModelForCausalLM.from_pretrained(path)
    ours = pk.load_quantized(path)
    cls = pk.PoTLinear if cfg.kind == "pot" else pk.IntLinear
    assert sum(isinstance(m, cls) for m in hf.modules()) == len(ours.quantization_report) > 0
    x = tokens()
    assert torch.equal(_logits(hf, x), _logits(ours, x))
    assert torch.equal(_logits(hf, x), _logits(model, x))
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "potkernels" and qc["bits"] == cfg.bits and qc["kind"] == cfg.kind
    # save_pretrained writes the potkernels format: load_quantized reads it back, same logits
    hf.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / QUANT_FILE).is_file()
    assert torch.equal(_logits(pk.load_quantized(tmp_path / "again"), x), _logits(ours, x))


@pytest.mark.parametrize("kwargs", [{"dtype": torch.bfloat16}, {"torch_dtype": torch.float16},
                                    {"device_map": "auto"}, {"device_map": {"": "cpu"}},
                                    {"low_cpu_mem_usage": True}], ids=str)
def test_from_pretrained_options(tmp_path, kwargs, one_thread):
    _, path = _saved(tmp_path, "llama", pk.PoTConfig(4, 32))
    hf = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    ours = pk.load_quantized(path, dtype=dtype)
    layer = hf.model.layers[0].mlp.up_proj
    assert isinstance(layer, pk.PoTLinear) and layer.scales.dtype == torch.float16 and layer.qweight.dtype == torch.int32
    assert hf.model.embed_tokens.weight.dtype == (dtype or torch.float32)
    x = tokens()
    assert torch.equal(_logits(hf, x), _logits(ours, x))


def test_quantize_on_load(tmp_path, one_thread):
    MODELS["llama"]().save_pretrained(tmp_path / "fp")
    qc = pk.PoTQuantizationConfig(bits=3, group_size=32)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "fp", quantization_config=qc)
    ref = pk.quantize_model(AutoModelForCausalLM.from_pretrained(tmp_path / "fp"), pk.PoTConfig(3, 32))
    assert isinstance(hf.model.layers[1].self_attn.o_proj, pk.PoTLinear) and not isinstance(hf.lm_head, pk.PoTLinear)
    x = tokens()
    assert torch.equal(_logits(hf, x), _logits(ref, x))
    hf.save_pretrained(tmp_path / "q")
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "q"), x), _logits(ref, x))


def test_config_rejects_bad_code():
    with pytest.raises(ValueError, match="bits"):
        pk.PoTQuantizationConfig(bits=5)
    with pytest.raises(ValueError, match="group_size"):
        pk.PoTQuantizationConfig(group_size=100)


def test_damaged_checkpoint_refused_before_loading(tmp_path):
    _, path = _saved(tmp_path, "llama", pk.PoTConfig(4, 32))
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        AutoModelForCausalLM.from_pretrained(path)


def test_config_less_checkpoint_refused(tmp_path):
    _, path = _saved(tmp_path, "llama", pk.PoTConfig(4, 32))
    os.remove(path / QUANT_FILE)
    with pytest.raises(FileNotFoundError, match=QUANT_FILE):
        AutoModelForCausalLM.from_pretrained(path)


def test_plain_transformers_fails_naming_potkernels(tmp_path):
    _, path = _saved(tmp_path, "llama", pk.PoTConfig(4, 32))
    code = ("import sys; from transformers import AutoModelForCausalLM\n"
            "assert 'potkernels' not in sys.modules\n"
            f"AutoModelForCausalLM.from_pretrained({str(path)!r})\n"
            "print('LOADED')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                       cwd=str(tmp_path))
    assert r.returncode != 0 and "LOADED" not in r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError") and "import potkernels" in last, r.stderr[-2000:]


def test_save_pretrained_survives_pickle_copy_and_dequantize(tmp_path, one_thread):
    import copy
    import io

    model, path = _saved(tmp_path, "llama", pk.PoTConfig(4, 32))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    twin = copy.deepcopy(again)
    assert twin.save_pretrained.model is twin
    twin.save_pretrained(tmp_path / "twin")
    x = tokens()
    assert torch.equal(_logits(pk.load_quantized(tmp_path / "twin"), x), _logits(model, x))
    hf = AutoModelForCausalLM.from_pretrained(path)
    hf.dequantize()  # transformers' own API: back to nn.Linear, then a plain float checkpoint
    hf.save_pretrained(tmp_path / "float")
    assert not (tmp_path / "float" / QUANT_FILE).exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "float")
    assert not any(isinstance(m, pk.PoTLinear) for m in plain.modules())
    assert torch.equal(_logits(plain, x), _logits(model, x))


def test_registration_is_lazy_but_always_in_time(tmp_path):
    """`import potkernels` does not import transformers' quantizer registry (seconds of imports), yet
    from_pretrained afterwards finds the potkernels quantizer."""
    _, path = _saved(tmp_path, "llama", pk.PoTConfig(4, 32))
    code = ("import sys, potkernels\n"
            "assert 'transformers.quantizers.auto' not in sys.modules\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(path)!r})\n"
            "print(type(m.model.layers[0].mlp.up_proj).__name__)\n")
    import pathlib
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "PoTLinear"

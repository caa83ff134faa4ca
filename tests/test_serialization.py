"""save_quantized / load_quantized: identical logits after reload, clear errors on bad checkpoints,
and loading never writes into the directory."""
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from potkernels import CheckpointError, IntConfig, PoTConfig, PoTLinear, load_quantized, quantize_model, save_quantized
from potkernels.integrations.serialization import FORMAT_VERSION, QUANT_FILE, WEIGHTS_FILE

from tiny_models import MODELS, input_embeddings_tied, tokens


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def _saved(tmp_path, arch="llama", cfg=PoTConfig(4, 32)):
    model = quantize_model(MODELS[arch](), cfg)
    save_quantized(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def _listing(folder: Path):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


@pytest.mark.parametrize("arch,cfg", [("gpt2", PoTConfig(4, 32)), ("llama", PoTConfig(3, 64)),
                                      ("llama-untied", IntConfig(4, None)), ("gpt2", IntConfig(2, 128))], ids=str)
def test_round_trip_identical_logits(tmp_path, arch, cfg):
    model, path = _saved(tmp_path, arch, cfg)
    before = _listing(path)
    again = load_quantized(path)
    assert _listing(path) == before  # loading wrote nothing
    assert not [p for p in path.iterdir() if p.name.startswith(".tmp")]  # no leftovers from saving
    x = tokens()
    assert torch.equal(_logits(model, x), _logits(again, x))
    assert input_embeddings_tied(again) == input_embeddings_tied(model)
    assert again.quantization_config == cfg and len(again.quantization_report) == len(model.quantization_report)
    for name, t in model.state_dict().items():
        assert torch.equal(t, again.state_dict()[name]) and t.dtype == again.state_dict()[name].dtype


def test_metadata_content(tmp_path):
    model, path = _saved(tmp_path, "gpt2")
    meta = json.loads((path / QUANT_FILE).read_text())
    assert meta["format"] == "potkernels" and meta["format_version"] == FORMAT_VERSION
    assert (meta["kind"], meta["bits"], meta["group_size"]) == ("pot", 4, 32)
    assert meta["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    assert {l["name"] for l in meta["layers"]} == {r.name for r in model.quantization_report}
    assert all(l["class"] == "PoTLinear" for l in meta["layers"])
    assert "lm_head.weight" not in load_file(str(path / WEIGHTS_FILE))


def test_load_with_dtype(tmp_path):
    model, path = _saved(tmp_path)
    again = load_quantized(path, dtype=torch.bfloat16)
    lin = again.model.layers[0].self_attn.q_proj
    assert isinstance(lin, PoTLinear) and lin.scales.dtype == torch.float16 and lin.qweight.dtype == torch.int32
    assert torch.equal(lin.scales, model.model.layers[0].self_attn.q_proj.scales)
    assert again.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.isfinite(_logits(again, tokens())).all()


def test_tokenizer_saved(tmp_path, shared_data):
    from transformers import AutoTokenizer, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    model = quantize_model(MODELS["gpt2"](), PoTConfig(4, 32))
    save_quantized(model, tmp_path / "ckpt", tokenizer=tok)
    again = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert again("hello world")["input_ids"] == tok("hello world")["input_ids"]


def test_save_requires_quantized_model(tmp_path):
    with pytest.raises(ValueError, match="quantize_model"):
        save_quantized(MODELS["llama"](), tmp_path / "x")


# ---------------------------------------------------------------- bad checkpoints
def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_quantized(tmp_path / "nope")
    _, path = _saved(tmp_path)
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_quantized(path)


def _truncate_weights(path):
    """Cut the saved weights file in half, as an interrupted copy would."""
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


def test_truncated_file(tmp_path):
    _, path = _saved(tmp_path)
    _truncate_weights(path)
    with pytest.raises(CheckpointError, match="checksum"):
        load_quantized(path)


def test_truncated_file_without_checksum(tmp_path):
    """Without a stored checksum the safetensors error is still turned into a clear one."""
    _, path = _saved(tmp_path)
    meta = json.loads((path / QUANT_FILE).read_text())
    del meta["sha256"]
    (path / QUANT_FILE).write_text(json.dumps(meta))
    _truncate_weights(path)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_quantized(path)


def test_tampered_byte(tmp_path):
    _, path = _saved(tmp_path)
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-100] ^= 0x40  # a bit flip inside the tensor data: safetensors alone would not notice
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_quantized(path)


@pytest.mark.parametrize("version", [0, 4, "2", None])
def test_unknown_format_version(tmp_path, version):
    _, path = _saved(tmp_path)
    meta = json.loads((path / QUANT_FILE).read_text())
    meta["format_version"] = version
    (path / QUANT_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version"):
        load_quantized(path)


def test_not_json(tmp_path):
    _, path = _saved(tmp_path)
    (path / QUANT_FILE).write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_quantized(path)


def _rewrite(path: Path, edit) -> None:
    """Change the tensors and the checksum consistently (so the structural checks are what fails)."""
    tensors = load_file(str(path / WEIGHTS_FILE))
    edit(tensors)
    save_file(tensors, str(path / WEIGHTS_FILE))
    meta = json.loads((path / QUANT_FILE).read_text())
    del meta["sha256"]
    (path / QUANT_FILE).write_text(json.dumps(meta))


def test_shape_mismatch_in_layer_list(tmp_path):
    _, path = _saved(tmp_path)
    meta = json.loads((path / QUANT_FILE).read_text())
    meta["layers"][0]["in_features"] += 32
    (path / QUANT_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"\[out, in\]"):
        load_quantized(path)


def test_config_does_not_match_tensors(tmp_path):
    _, path = _saved(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 192
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mlp"):
        load_quantized(path)


def test_tensor_shape_and_dtype_mismatch(tmp_path):
    _, path = _saved(tmp_path)
    _rewrite(path, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.scales",
                                           t["model.layers.0.mlp.up_proj.scales"].float()))
    with pytest.raises(CheckpointError, match="up_proj.scales"):
        load_quantized(path)
    _, path = _saved(tmp_path / "b")
    _rewrite(path, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.qweight", t["model.layers.0.mlp.up_proj.qweight"][:-1]))
    with pytest.raises(CheckpointError, match="up_proj.qweight"):
        load_quantized(path)


def test_missing_and_unexpected_keys(tmp_path):
    _, path = _saved(tmp_path)
    _rewrite(path, lambda t: t.pop("model.layers.1.self_attn.k_proj.scales"))
    with pytest.raises(CheckpointError, match="missing.*k_proj.scales"):
        load_quantized(path)
    _, path = _saved(tmp_path / "b")
    _rewrite(path, lambda t: t.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match="unexpected.*extra.weight"):
        load_quantized(path)


def test_failed_load_leaves_directory_untouched(tmp_path):
    _, path = _saved(tmp_path)
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    os.utime(path / WEIGHTS_FILE, ns=(1, 1))
    before = _listing(path)
    with pytest.raises(CheckpointError):
        load_quantized(path)
    assert _listing(path) == before


def test_round_trip_half_model(tmp_path):
    """A model cast with .half() after quantizing keeps its packed dtypes and reloads in fp16."""
    model = quantize_model(MODELS["llama"](), PoTConfig(4, 32)).half()
    save_quantized(model, tmp_path / "ckpt")
    again = load_quantized(tmp_path / "ckpt")
    assert again.model.embed_tokens.weight.dtype == torch.float16
    assert again.model.layers[0].mlp.down_proj.qweight.dtype == torch.int32
    x = tokens()
    assert torch.equal(_logits(model, x), _logits(again, x))


def test_foreign_quantization_config_is_dropped(tmp_path):
    """A float model loaded from GGUF carries config.quantization_config; the checkpoint carries ours instead."""
    model = quantize_model(MODELS["llama"](), PoTConfig(4, 32))
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    save_quantized(model, tmp_path / "ckpt")
    qc = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]
    assert qc == {"quant_method": "potkernels", "kind": "pot", "bits": 4, "group_size": 32,
                  "format_version": FORMAT_VERSION, "modules_to_not_convert": ["lm_head"]}
    assert model.config.quantization_config["quant_method"] == "gguf"  # the live model is untouched
    assert oct((tmp_path / "ckpt" / WEIGHTS_FILE).stat().st_mode & 0o777) == oct(0o644)
    x = tokens()
    assert torch.equal(_logits(model, x), _logits(load_quantized(tmp_path / "ckpt"), x))


def test_v2_checkpoint_with_v1_tensors_is_refused(tmp_path):
    """A version-1 checkpoint is repacked on load; a v1-shaped state dict labelled v2 is refused
    (strict load), and a v2 state dict labelled v1 cannot be repacked."""
    _, path = _saved(tmp_path)
    meta = json.loads((path / QUANT_FILE).read_text())
    meta["format_version"] = 1
    (path / QUANT_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="upgrade the version-1"):
        load_quantized(path)

"""lm-eval on the in-memory (quantized) model over a local text file, offline."""
import math

import pytest
import torch

from calibration.eval import default_window, lm_eval_text, perplexity, text_task, tokenize_text


@pytest.fixture
def tiny(shared_data):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64)).eval(), tok


def test_lm_eval_local_text(tmp_path, shared_data, tiny):
    model, tok = tiny
    text = (shared_data / "tinyshakespeare.txt").read_text()[:6000]
    path = tmp_path / "t.txt"
    path.write_text(text)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = lm_eval_text(model, tok, path, limit=3)
        from potkernels import PoTConfig, quantize_model

        quantize_model(model, PoTConfig(4, 32))
        rq = lm_eval_text(model, tok, path, limit=3)  # the same harness on the quantized model
    finally:
        torch.set_num_threads(n)
    for res in (r, rq):
        assert set(res) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}
        assert all(math.isfinite(v) and v > 0 for v in res.values())
        # lm-eval's two byte-level numbers must agree with each other: bpb = log2(byte ppl)
        assert res["bits_per_byte"] == pytest.approx(math.log2(res["byte_perplexity"]), rel=1e-6)
    assert r != rq


def test_text_task_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        text_task(tmp_path / "missing.txt")
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        text_task(tmp_path / "e.txt")


def test_perplexity_windows(tiny):
    model, tok = tiny
    assert default_window(model) == 64
    ids = tokenize_text("the quick brown fox jumps over the lazy dog. " * 40, tok)
    r = perplexity(model, ids, window=32, max_windows=3)
    assert r["windows"] == 3 and r["tokens"] == 3 * 31 and math.isfinite(r["ppl"])
    # batching windows does not change the number
    assert perplexity(model, ids, window=32, max_windows=3, batch_size=2)["ppl"] == pytest.approx(r["ppl"], rel=1e-5)

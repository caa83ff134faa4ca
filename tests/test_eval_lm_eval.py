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
    # per-window NLLs: their mean is the NLL, and a prefix of them is the run with fewer windows
    assert len(r["window_nll"]) == 3 and sum(r["window_nll"]) / 3 == pytest.approx(r["nll"], rel=1e-12)
    two = perplexity(model, ids, window=32, max_windows=2)
    assert math.exp(sum(r["window_nll"][:2]) / 2) == pytest.approx(two["ppl"], rel=1e-6)


def _saved_quantized(tmp_path, tiny):
    from potkernels import PoTConfig, quantize_model, save_quantized

    model, tok = tiny
    quantize_model(model, PoTConfig(4, 32))
    save_quantized(model, tmp_path / "ckpt", tokenizer=tok)
    return model, tok, tmp_path / "ckpt"


def _task_yaml(tmp_path, text_path):
    import yaml

    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "local_text.yaml").write_text(yaml.safe_dump(text_task(text_path)))
    return folder


def test_lm_eval_evaluator_on_saved_checkpoint_equals_in_memory(tmp_path, shared_data, tiny, one_thread):
    """lm-eval's own evaluator and HFLM, given the checkpoint *folder*, load it through transformers'
    from_pretrained (the potkernels quantizer) and score exactly what the in-memory model scores."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    path = tmp_path / "t.txt"
    path.write_text((shared_data / "tinyshakespeare.txt").read_text()[:6000])
    model, tok, ckpt = _saved_quantized(tmp_path, tiny)
    in_memory = lm_eval_text(model, tok, path, limit=3)
    out = simple_evaluate(model="hf", model_args=f"pretrained={ckpt},dtype=float32,max_length=64", tasks=["local_text"],
                          limit=3, device="cpu", batch_size=1, bootstrap_iters=0, log_samples=False,
                          task_manager=TaskManager(include_defaults=False, include_path=str(_task_yaml(tmp_path, path))))
    metrics = out["results"]["local_text"]
    for m, v in in_memory.items():
        assert float(metrics[f"{m},none"]) == pytest.approx(v, rel=1e-6)


@pytest.mark.slow
def test_potkernels_lm_eval_command(tmp_path, shared_data, tiny, one_thread):
    """`python -m potkernels lm_eval --model hf --model_args pretrained=CKPT --tasks local_text --include_path DIR`:
    lm-eval's own command line (it indexes its built-in tasks: ~25 s) on the saved checkpoint."""
    import json

    from potkernels.cli import main

    path = tmp_path / "t.txt"
    path.write_text((shared_data / "tinyshakespeare.txt").read_text()[:6000])
    model, tok, ckpt = _saved_quantized(tmp_path, tiny)
    want = lm_eval_text(model, tok, path, limit=2)
    rc = main(["lm_eval", "--model", "hf", "--model_args", f"pretrained={ckpt},dtype=float32,max_length=64",
               "--tasks", "local_text", "--include_path", str(_task_yaml(tmp_path, path)), "--limit", "2",
               "--device", "cpu", "--batch_size", "1", "--output_path", str(tmp_path / "results")])
    assert rc == 0
    results = list((tmp_path / "results").rglob("results_*.json"))
    assert len(results) == 1
    got = json.loads(results[0].read_text())["results"]["local_text"]
    assert float(got["word_perplexity,none"]) == pytest.approx(want["word_perplexity"], rel=1e-6)


@pytest.mark.parametrize("kind", ["pot", "int"])
def test_perplexity_decodes_each_packed_weight_once(tiny, monkeypatch, kind):
    """On CPU a packed model's perplexity decodes every layer once per run, with the same number bit for bit
    as decoding at every forward, and leaves the layers as they were (no cache kept after the run)."""
    from potkernels import IntConfig, PoTConfig, ops, quantize_model
    from potkernels.nn import _PackedLinear

    model, tok = tiny
    quantize_model(model, PoTConfig(3, 32) if kind == "pot" else IntConfig(3, 32))
    ids = tokenize_text("the quick brown fox jumps over the lazy dog. " * 40, tok)
    layers = [m for m in model.modules() if isinstance(m, _PackedLinear)]
    assert layers
    per_forward = []
    with torch.no_grad():  # today's path: every forward decodes (the reference matmul), window by window
        for w in ids[: 4 * 32].view(4, 32):
            logits = model(w[None]).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], w[1:], reduction="none")
            per_forward.append(nll.double().mean().item())
    decodes = []
    real = ops.dequantize
    monkeypatch.setattr(ops, "dequantize", lambda *a, **k: decodes.append(1) or real(*a, **k))
    r = perplexity(model, ids, window=32, max_windows=4)
    assert r["window_nll"] == per_forward  # bit for bit
    assert len(decodes) == len(layers)  # once per layer for 4 windows
    assert all(not m.cache_decoded and m._decoded is None for m in layers)

"""``python -m calibration``: clear errors for impossible options, and the quantize → eval flow."""
import json

import pytest
import torch

from calibration import cli
from calibration.gptq import DEFAULT_SCALE_FITS
from tiny_models import tiny_gpt2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_model_dir(tmp_path, shared_data):
    """A tiny random GPT-2 with the real GPT-2 tokenizer, saved as a local model folder."""
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    model = tiny_gpt2(vocab=len(tok))
    out = tmp_path / "tiny"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def text_file(tmp_path, shared_data):
    path = tmp_path / "text.txt"
    path.write_text((shared_data / "tinyshakespeare.txt").read_text()[:20000])
    return path


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,message", [
    (["--kind", "int", "--method", "two-step"], "uniform int (kind 'int') supports ('rtn', 'gptq')"),
    (["--kind", "int", "--method", "init"], "uniform int (kind 'int') supports ('rtn', 'gptq')"),
    (["--kind", "int", "--method", "gptq", "--act-weighted"], "int GPTQ uses min/max scales"),
    (["--method", "two-step", "--refine"], "--refine (step 2 with the GPTQ codes frozen) needs --method gptq"),
    (["--method", "two-step", "--true-sequential", "--scale-fits", "1"],
     "--true-sequential, --scale-fits: GPTQ settings, need --method gptq"),
    (["--method", "gptq", "--scale-fits", "-1"], "--scale-fits must be ≥ 0"),
    (["--method", "gptq", "--calib", "/nonexistent/calib.txt"], "--calib '/nonexistent/calib.txt': no such file"),
    (["--kind", "pot", "--bits", "8", "--method", "rtn"], "PoT bits must be one of"),
    (["--kind", "pot", "--bits", "3", "--group-size", "100", "--method", "rtn"], "group_size must be one of"),
    (["--method", "two-step", "--calib", "/nonexistent/calib.txt"], "--calib '/nonexistent/calib.txt': no such file"),
    (["--method", "rtn", "--act-weighted"], "use it with --method init, two-step or gptq"),
    (["--method", "init", "--act-weighted", "--calib", "/nonexistent/calib.txt"], "--calib '/nonexistent/calib.txt': no such file"),
])
def test_impossible_options_fail_before_loading(capsys, argv, message):
    code, out, err = run(capsys, "quantize", "--model", "/nonexistent/model", *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_inputs(capsys, tmp_path, tiny_model_dir, text_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run(capsys, "quantize", "--model", tiny_model_dir, "--calib", empty)
    assert code == 2 and "is empty" in err
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be")
    code, _, err = run(capsys, "quantize", "--model", tiny_model_dir, "--calib", short, "--seq-len", "32")
    assert code == 2 and "too short" in err
    code, _, err = run(capsys, "quantize", "--model", tmp_path / "missing-model", "--method", "rtn")
    assert code == 2 and "missing-model' does not exist" in err
    code, _, err = run(capsys, "eval", tiny_model_dir, "--text", short, "--window", "32")
    assert code == 2 and "fewer than one window" in err
    with pytest.raises(SystemExit):  # argparse: not an int
        cli.main(["quantize", "--group-size", "big"])
    capsys.readouterr()


def test_quantize_then_eval(capsys, tmp_path, tiny_model_dir, text_file):
    """quantize (two-step, with eval) → checkpoint → eval gives the same perplexity, JSON last line."""
    out_dir = tmp_path / "q"
    code, out, err = run(capsys, "quantize", "--model", tiny_model_dir, "--bits", "3", "--group-size", "32",
                         "--method", "two-step", "--calib", text_file, "--samples", "4",
                         "--seq-len", "32", "--epochs", "1", "--eval-text", text_file, "--window", "64", "--max-windows", "4",
                         "--out", out_dir, "--report", tmp_path / "report.json", "--json")
    assert code == 0, err
    q = json.loads(out.strip().splitlines()[-1])
    assert q["method"] == "two-step" and q["config"] == {"bits": 3, "group_size": 32, "kind": "pot"}
    assert q["samples"] == 4 and q["seq_len"] == 32 and q["peak_rss_mib"] > 0 and q["out"] == str(out_dir)
    assert q["act_weighted"] and q["epochs"] == 1  # two-step weights step 1 by activations by default
    assert "float model: perplexity" in err and q["perplexity_fp"] > 1
    assert "output MSE" in err  # per-block report
    rep = json.loads((tmp_path / "report.json").read_text())
    assert len(rep["blocks"]) == 2 and len(rep["layers"]) == 8
    assert set(rep["blocks"][0]["sqnr_init_db"]) == set(rep["blocks"][0]["sqnr_final_db"])
    code, out, err = run(capsys, "eval", out_dir, "--text", text_file, "--window", "64", "--max-windows", "4",
                         "--json")
    assert code == 0, err
    e = json.loads(out.strip().splitlines()[-1])
    assert e["quantization"] == q["config"]
    assert e["perplexity"] == pytest.approx(q["perplexity"], rel=1e-6)
    assert e["window"] == 64 and e["tokens"] == 4 * 63 and e["seconds"] > 0
    # the float model row: a plain model folder
    code, out, _ = run(capsys, "eval", tiny_model_dir, "--text", text_file, "--window", "64", "--max-windows", "4",
                       "--json")
    fp = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and fp["quantization"] is None and fp["perplexity"] != e["perplexity"]


def test_rtn_int_quantize_json(capsys, tiny_model_dir, text_file):
    code, out, err = run(capsys, "quantize", "--model", tiny_model_dir, "--kind", "int", "--bits", "4",
                         "--group-size", "32", "--method", "rtn", "--eval-text", text_file, "--window", "64",
                         "--max-windows", "2", "--no-eval-fp", "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["config"]["kind"] == "int" and r["samples"] is None and r["perplexity"] > 1
    assert "perplexity_fp" not in r


def test_activation_weighted_step1_json(capsys, tiny_model_dir, text_file):
    code, out, err = run(capsys, "quantize", "--model", tiny_model_dir, "--bits", "3", "--group-size", "32",
                         "--method", "init", "--act-weighted", "--calib", text_file, "--samples", "2",
                         "--seq-len", "32", "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["method"] == "init" and r["act_weighted"] and r["epochs"] == 0 and r["samples"] == 2


@pytest.fixture
def context128_model_dir(tmp_path, shared_data):
    """A tiny random GPT-2 whose context (128) is shorter than every default --seq-len."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    cfg = GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=len(tok), n_positions=128, tie_word_embeddings=True)
    out = tmp_path / "ctx128"
    GPT2LMHeadModel(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("method", ["gptq", "two-step"])
def test_short_context_model_calibrates_with_default_flags(capsys, context128_model_dir, text_file, method):
    """Default --seq-len (512 gptq / 256 two-step) > the model's 128 positions: clamped with a note, no IndexError."""
    argv = ["quantize", "--model", context128_model_dir, "--method", method, "--calib", text_file, "--json"]
    if method == "two-step":
        argv += ["--epochs", "1"]  # keep the test short; the defaults under test are the window ones
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "longer than the model's context (128 tokens)" in err
    q = json.loads(out.strip().splitlines()[-1])
    assert q["seq_len"] == 128 and q["samples"] == 32 and q["method"] == method
    # step-2 defaults per method: gptq's refine 1 pass, 1 window per step, lr 2e-3; two-step 2 windows, 1e-3
    assert (q["epochs"], q["batch_size"], q["lr"]) == ((1, 1, 2e-3) if method == "gptq" else (1, 2, 1e-3))


def test_init_with_calib_says_it_is_unused(capsys, tiny_model_dir, text_file):
    code, out, err = run(capsys, "quantize", "--model", tiny_model_dir, "--method", "init", "--calib", text_file,
                         "--bits", "3", "--group-size", "32", "--json")
    assert code == 0, err
    assert "is data-free; --calib" in err and "is not used" in err
    assert json.loads(out.strip().splitlines()[-1])["calib"] is None


def test_gptq_cli_int_and_pot(capsys, tmp_path, tiny_model_dir, text_file):
    """gptq is the default method, with refine on: int with --no-refine, PoT with every GPTQ flag set."""
    for kind, extra in (("int", ["--no-refine"]),
                        ("pot", ["--refine", "--epochs", "1", "--true-sequential", "--scale-fits", "1"])):
        code, out, err = run(capsys, "quantize", "--model", tiny_model_dir, "--kind", kind, "--bits", "3",
                             "--group-size", "32", "--calib", text_file, "--samples", "4",
                             "--seq-len", "32", "--out", tmp_path / kind, "--json", *extra)
        assert code == 0, err
        q = json.loads(out.strip().splitlines()[-1])
        assert q["method"] == "gptq" and q["refine"] == (kind == "pot") and q["act_weighted"] == (kind == "pot")
        assert q["true_sequential"] == (kind == "pot") and q["scale_fits"] == (1 if kind == "pot" else DEFAULT_SCALE_FITS)
        assert (tmp_path / kind).is_dir() and "GPTQ" in err  # the per-block progress bar

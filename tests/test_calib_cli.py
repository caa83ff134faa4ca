"""``python -m calibration``: clear errors for impossible options, and the quantize → eval flow."""
import json

import pytest
import torch

from calibration import cli
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
    (["--kind", "int", "--method", "two-step"], "only supports 'rtn'"),
    (["--kind", "int", "--method", "init"], "only supports 'rtn'"),
    (["--kind", "pot", "--bits", "8", "--method", "rtn"], "PoT bits must be one of"),
    (["--kind", "pot", "--bits", "3", "--group-size", "100", "--method", "rtn"], "group_size must be one of"),
    (["--method", "two-step", "--calib", "/nonexistent/calib.txt"], "--calib '/nonexistent/calib.txt': no such file"),
    (["--method", "rtn", "--act-weighted"], "use it with --method init or two-step"),
    (["--method", "init", "--act-weighted", "--calib", "/nonexistent/calib.txt"], "--calib '/nonexistent/calib.txt': no such file"),
])
def test_impossible_options_fail_before_loading(capsys, argv, message):
    code, out, err = run(capsys, "quantize", "--model", "/nonexistent/model", *argv)
    assert code == 1 and message in err and "Traceback" not in err


def test_bad_inputs(capsys, tmp_path, tiny_model_dir, text_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run(capsys, "quantize", "--model", tiny_model_dir, "--calib", empty)
    assert code == 1 and "is empty" in err
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be")
    code, _, err = run(capsys, "quantize", "--model", tiny_model_dir, "--calib", short, "--seq-len", "32")
    assert code == 1 and "too short" in err
    code, _, err = run(capsys, "quantize", "--model", tmp_path / "missing-model", "--method", "rtn")
    assert code == 1 and "missing-model' does not exist" in err
    code, _, err = run(capsys, "eval", tiny_model_dir, "--text", short, "--window", "32")
    assert code == 1 and "fewer than one window" in err
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

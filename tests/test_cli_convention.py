"""One exit-status convention for both command lines (potkernels/cli_help.py): a bad input is one
``error:`` line and exit 2 before any model loads (or, where only the tokenizer can tell, before any
work), argparse errors are one line, Ctrl-C during the imports is one line and exit 130; and
calibration gives the same checkpoint at 1 and 2 threads."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calibration import cli as calib_cli
from potkernels import cli as demo_cli
from potkernels.cli_help import EXIT_INTERRUPTED, EXIT_USAGE

from tiny_models import tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_model_dir(tmp_path, shared_data):
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    out = tmp_path / "tiny"
    tiny_gpt2(vocab=len(tok)).save_pretrained(out)  # n_positions = 64: the default window is 64 tokens
    tok.save_pretrained(out)
    return out


def one_line_error(capsys, main, argv, only_output: bool = True) -> str:
    """The ``error:`` line of a run that must exit 2; ``only_output``: stderr holds nothing else (no model
    loading progress, so nothing was loaded)."""
    capsys.readouterr()  # drop what fixtures printed
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE, (code, err)
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err, err
    assert not only_output or err == last, err
    return last


def _files(tmp_path):
    files = {"nul": b"\0" * 4096, "latin1": "café à la crème\n".encode("latin-1") * 50,
             "control": ("abc\x01\x02\x03\x04\x05\n" * 100).encode(), "short": b"To be, or not to be\n"}
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("name,message", [("nul", "not text: it holds NUL bytes"), ("latin1", "not UTF-8 text"),
                                          ("control", "control characters"),
                                          ("short", "fewer than one window of 64 tokens; give a longer text or a "
                                                    "smaller --window")])
def test_text_inputs_rejected_before_loading(capsys, tmp_path, tiny_model_dir, no_model_load, name, message):
    path = _files(tmp_path)[name]
    for argv in (["quantize", "--model", tiny_model_dir, "--method", "rtn", "--eval-text", path],
                 ["quantize", "--model", tiny_model_dir, "--calib", path],
                 ["eval", tiny_model_dir, "--text", path]):
        if name == "short" and "--calib" in argv:
            continue  # calibration windows are cut from the text after tokenizing: test_calib_cli covers it
        assert message in one_line_error(capsys, calib_cli.main, argv)


def test_text_with_too_few_tokens_fails_before_any_work(capsys, monkeypatch, tmp_path, tiny_model_dir):
    """200 characters but fewer than 64 tokens: known only from the tokenizer, still before calibration."""
    path = tmp_path / "aaa.txt"
    path.write_text("a" * 200)

    def boom(*a, **k):
        raise AssertionError("calibration ran before the evaluation text was checked")

    monkeypatch.setattr(calib_cli, "calibrate_model", boom)
    err = one_line_error(capsys, calib_cli.main, ["quantize", "--model", tiny_model_dir, "--method", "rtn",
                                                  "--eval-text", path], only_output=False)
    assert "fewer than one window of 64 tokens" in err and "--window" in err


@pytest.mark.parametrize("argv,message", [
    (["--damp", "-1"], "--damp is a fraction"), (["--damp", "nan"], "--damp is a fraction"),
    (["--lr", "0"], "--lr must be a positive number"), (["--lam", "-0.5"], "--lam must be ≥ 0"),
    (["--epochs", "-1"], "--epochs must be ≥ 0"), (["--seq-len", "1"], "--seq-len must be ≥ 2"),
    (["--window", "1"], "--window must be ≥ 2"), (["--scale-fits", "-2"], "--scale-fits must be ≥ 0"),
])
def test_numeric_ranges_checked_before_loading(capsys, tiny_model_dir, no_model_load, argv, message):
    assert message in one_line_error(capsys, calib_cli.main, ["quantize", "--model", tiny_model_dir, *argv])


@pytest.mark.parametrize("argv,message", [(["--prompt", ""], "--prompt must be non-empty"),
                                          (["--prompt", "a\0b"], "without NUL"),
                                          (["--max-new-tokens", "0"], "--max-new-tokens must be ≥ 1")])
def test_demo_inputs_checked_before_loading(capsys, tmp_path, tiny_model_dir, no_model_load, argv, message):
    out = tmp_path / "o"
    assert message in one_line_error(capsys, demo_cli.main, ["demo", "--model", tiny_model_dir, "--out", out, *argv])
    assert not out.exists()


@pytest.mark.parametrize("main,argv", [(calib_cli.main, ["quantize", "--bits", "x"]),
                                       (calib_cli.main, ["frobnicate"]),
                                       (calib_cli.main, ["eval"]),
                                       (demo_cli.main, ["demo", "--kind", "float"]),
                                       (demo_cli.main, [])])
def test_argparse_errors_are_one_line(capsys, main, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == EXIT_USAGE and err.startswith("error: ") and "\n" not in err and "--help" in err, err


@pytest.mark.parametrize("module", ["calibration", "potkernels"])
def test_ctrl_c_during_imports(module):
    """SIGINT while ``python -m …`` is still importing torch: one line, exit 130, no traceback."""
    # SIGINT back to its default in the child: a CI runner may start jobs with it ignored (inherited).
    proc = subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # wait until torch's library is being loaded
        try:
            if "libtorch" in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("the imports finished before the signal could be sent")
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1].strip()
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, err)
    assert err.splitlines() == ["interrupted: nothing was written"], err


@pytest.mark.slow
def test_calibration_independent_of_thread_count(tmp_path, shared_data):
    """The default method (GPTQ + scale refits + refine) at 1 and 2 threads writes identical checkpoints.
    The model is big enough for the thread-dependent ops (LAPACK, whole-tensor sums) to differ without
    calibration/threads.py: 24 of its 34 tensors did."""
    import torch
    from safetensors import safe_open
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=640, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512, bos_token_id=0,
                      eos_token_id=1, tie_word_embeddings=True)
    model_dir = tmp_path / "model"
    LlamaForCausalLM(cfg).eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    results = {}
    for threads in (1, 2):
        out = tmp_path / f"q{threads}"
        r = subprocess.run([sys.executable, "-m", "calibration", "quantize", "--model", model_dir, "--samples", "4",
                            "--seq-len", "128", "--epochs", "1", "--threads", str(threads), "--out", out, "--json"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        with safe_open(out / "model.safetensors", "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata()
        results[threads] = (json.loads(r.stdout.strip().splitlines()[-1]), tensors, meta)
    (j1, t1, m1), (j2, t2, m2) = results[1], results[2]
    assert j1["threads"] == 1 and j2["threads"] == 2 and j1["method"] == "gptq" and j1["refine"]
    assert m1 == m2 and t1.keys() == t2.keys() and any(k.endswith("qweight") for k in t1)
    assert [k for k in t1 if not torch.equal(t1[k], t2[k])] == []  # (the header's key order may differ)

"""Block streaming (offload, lazily loaded safetensors) and resume of the block-wise calibrations.

Every comparison is bit for bit: the streamed or resumed run must give the very tensors of the
plain in-memory run.
"""
import json

import pytest
import torch

from calibration import calibrate_model
from calibration.stream import BlockLoop
from potkernels.format import PoTConfig, IntConfig
from potkernels.integrations.serialization import WEIGHTS_FILE, save_checkpoint_dir
from potkernels.models import load_lazy
from safetensors.torch import load_file
from tiny_models import VOCAB, tiny_gpt2, tiny_llama

GPTQ = dict(method="gptq", refine=True, epochs=1, hessian_batch=2, batch_size=2, progress=False)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def llama_dir(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama()
    model.config.num_hidden_layers = 3  # three blocks: resume has a middle to stop at
    model = type(model)(model.config).eval()
    folder = tmp_path / "llama"
    model.save_pretrained(folder)
    return folder


def _from_pretrained(folder):
    return type(tiny_llama()).from_pretrained(folder).eval()


def _calib(seq: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, seq), generator=torch.Generator().manual_seed(1))


def test_lazy_load_matches_from_pretrained(llama_dir):
    ref = _from_pretrained(llama_dir)
    lazy = load_lazy(llama_dir)
    assert lazy.lazy_weights.pending(lazy.model.layers[0])  # blocks not read yet
    assert not any(lazy.lazy_weights.pending(m, recurse=False) for m in (lazy.model.embed_tokens, lazy.model.norm))
    for i, block in enumerate(lazy.model.layers):
        lazy.lazy_weights.materialize(block, f"model.layers.{i}")
    _assert_same_tensors(_state(ref), _state(lazy))
    ids = _calib()
    assert torch.equal(ref(ids).logits, lazy(ids).logits)


@pytest.mark.parametrize("kind", ["pot", "int"])
def test_streamed_codes_equal_in_memory(llama_dir, kind):
    cfg = PoTConfig(3, 32) if kind == "pot" else IntConfig(3, 32)
    opts = dict(GPTQ, refine=kind == "pot")
    ref = _from_pretrained(llama_dir)
    calibrate_model(ref, cfg, _calib(), **opts)
    streamed = load_lazy(llama_dir)
    calibrate_model(streamed, cfg, _calib(), offload=True, **opts)
    _assert_same_tensors(_state(ref), _state(streamed))
    assert [r.to_dict() for r in ref.quantization_report] == [r.to_dict() for r in streamed.quantization_report]


def test_two_step_offload_in_memory_model():
    """Two-step with a whole block skipped (kept float, its outputs feed the next block)."""
    torch.manual_seed(0)
    model = tiny_gpt2()
    twin = tiny_gpt2()
    twin.load_state_dict(model.state_dict())
    ids = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(2))
    kw = dict(method="two-step", epochs=1, batch_size=2, progress=False, skip=("lm_head", "transformer.h.0"))
    calibrate_model(model, PoTConfig(3, 32), ids, **kw)
    calibrate_model(twin, PoTConfig(3, 32), ids, offload=True, **kw)
    _assert_same_tensors(_state(model), _state(twin))
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"


def test_lazy_model_needs_offload(llama_dir):
    with pytest.raises(ValueError, match="offload=True"):
        calibrate_model(load_lazy(llama_dir), PoTConfig(3, 32), _calib(), **GPTQ)


class _Crash(KeyboardInterrupt):
    pass


def _crash_after(monkeypatch, n_blocks: int) -> None:
    """Make the block loop raise (as a Ctrl-C would) right after ``n_blocks`` blocks were saved."""
    leave = BlockLoop.leave

    def leave_then_crash(self, idx, *args, **kwargs):
        out = leave(self, idx, *args, **kwargs)
        if idx + 1 == n_blocks:
            raise _Crash
        return out

    monkeypatch.setattr(BlockLoop, "leave", leave_then_crash)


@pytest.mark.parametrize("offload", [False, True])
def test_resume_after_interrupt_equals_uninterrupted(llama_dir, tmp_path, monkeypatch, offload):
    cfg = PoTConfig(3, 32)
    load = load_lazy if offload else _from_pretrained
    ref = load(llama_dir)
    calibrate_model(ref, cfg, _calib(), offload=offload, **GPTQ)
    work = tmp_path / "work"
    with monkeypatch.context() as m:
        _crash_after(m, 2)
        with pytest.raises(_Crash):
            calibrate_model(load(llama_dir), cfg, _calib(), offload=offload, work_dir=work, **GPTQ)
    assert json.loads((work / "progress.json").read_text())["next_block"] == 2
    resumed = load(llama_dir)
    calibrate_model(resumed, cfg, _calib(), offload=offload, work_dir=work, resume=True, **GPTQ)
    assert resumed.calibration_report["resumed_at_block"] == 2
    _assert_same_tensors(_state(ref), _state(resumed))
    assert [r.to_dict() for r in ref.quantization_report] == [r.to_dict() for r in resumed.quantization_report]
    assert [b["index"] for b in resumed.calibration_report["blocks"]] == [0, 1, 2]
    # the saved checkpoints are the same files' tensors
    a, b = tmp_path / "a", tmp_path / "b"
    save_checkpoint_dir(ref, a)
    save_checkpoint_dir(resumed, b)
    _assert_same_tensors(load_file(str(a / WEIGHTS_FILE)), load_file(str(b / WEIGHTS_FILE)))


def test_resume_refuses_other_settings(llama_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    with monkeypatch.context() as m:
        _crash_after(m, 1)
        with pytest.raises(_Crash):
            calibrate_model(load_lazy(llama_dir), PoTConfig(3, 32), _calib(), offload=True, work_dir=work, **GPTQ)
    with pytest.raises(ValueError, match="settings"):
        calibrate_model(load_lazy(llama_dir), PoTConfig(4, 32), _calib(), offload=True, work_dir=work, resume=True,
                        **GPTQ)
    with pytest.raises(ValueError, match="calib_sha256"):
        calibrate_model(load_lazy(llama_dir), PoTConfig(3, 32), _calib() % 7, offload=True, work_dir=work,
                        resume=True, **GPTQ)


def test_resume_needs_a_work_dir_and_a_block_method(llama_dir):
    model = _from_pretrained(llama_dir)
    with pytest.raises(ValueError, match="work_dir"):
        calibrate_model(model, PoTConfig(3, 32), _calib(), resume=True, **GPTQ)
    with pytest.raises(ValueError, match="data-free"):
        calibrate_model(model, PoTConfig(3, 32), method="rtn", work_dir="x")


# ---------------------------------------------------------------- the CLI: --offload, and --resume after a SIGINT
_SLOW_AFTER_BLOCK = """
import pathlib, sys, time
from calibration.cli import main
from calibration.stream import BlockLoop

leave = BlockLoop.leave


def leave_then_wait(self, idx, *args, **kwargs):
    out = leave(self, idx, *args, **kwargs)
    if idx == 1:  # block 1 is saved: tell the test, then wait for its SIGINT
        pathlib.Path(sys.argv[1]).write_text("ready")
        time.sleep(120)
    return out


BlockLoop.leave = leave_then_wait
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture
def gpt2_dir(tmp_path, shared_data):
    """A tiny random 3-block GPT-2 with the real GPT-2 tokenizer, saved as a local safetensors folder."""
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    torch.manual_seed(0)
    model = tiny_gpt2(vocab=len(tok))
    model.config.n_layer = 3
    model = type(model)(model.config).eval()
    out = tmp_path / "gpt2"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_cli_resume_after_sigint(gpt2_dir, tmp_path, shared_data):
    import os
    import signal
    import subprocess
    import sys
    import time

    from calibration import cli

    calib = tmp_path / "calib.txt"
    calib.write_text((shared_data / "tinyshakespeare.txt").read_text()[:20000])
    args = ["quantize", "--model", str(gpt2_dir), "--bits", "3", "--group-size", "32", "--calib", str(calib),
            "--samples", "4", "--seq-len", "32", "--epochs", "1", "--offload", "--threads", "1"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli.main(args + ["--out", str(ref)]) == 0
    flag = tmp_path / "ready"
    script = tmp_path / "slow.py"
    script.write_text(_SLOW_AFTER_BLOCK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    # SIGINT back to its default in the child: a CI runner may start jobs with it ignored (inherited).
    proc = subprocess.Popen([sys.executable, str(script), str(flag), *args, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and not out.exists()
    work = tmp_path / ".out.partial"
    assert json.loads((work / "progress.json").read_text())["next_block"] == 2
    assert cli.main(args + ["--out", str(out)]) == 2  # finished blocks are never dropped silently (bad input: 2)
    assert cli.main(args + ["--out", str(out), "--resume"]) == 0
    assert not work.exists()
    _assert_same_tensors(load_file(str(ref / WEIGHTS_FILE)), load_file(str(out / WEIGHTS_FILE)))


def test_cli_resume_needs_out(capsys):
    from calibration import cli

    assert cli.main(["quantize", "--resume"]) == 2
    assert "--resume continues the run saved next to --out" in capsys.readouterr().err

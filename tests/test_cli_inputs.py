"""Both command lines never lose or fake work: every bad input is reported before any model loads and
leaves existing files untouched; checkpoints appear complete or not at all; Ctrl-C exits 130 in one line."""
import argparse
import os

import pytest

from calibration import cli as calib_cli
from potkernels import cli as demo_cli

from tiny_models import tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_model_dir(tmp_path, shared_data):
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    out = tmp_path / "tiny"
    tiny_gpt2(vocab=len(tok)).save_pretrained(out)  # n_positions = 64
    tok.save_pretrained(out)
    return out


@pytest.fixture
def text_file(tmp_path, shared_data):
    path = tmp_path / "text.txt"
    path.write_text((shared_data / "tinyshakespeare.txt").read_text()[:6000])
    return path


def _listing(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def run(capsys, main, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _quantize(tiny_model_dir, *extra):
    return ["quantize", "--model", tiny_model_dir, "--method", "rtn", "--bits", "4", "--group-size", "32", *extra]


def test_out_refused_before_loading(capsys, tmp_path, tiny_model_dir, no_model_load):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("unrelated")
    before = _listing(full)
    code, _, err = run(capsys, calib_cli.main, *_quantize(tiny_model_dir, "--out", full))
    assert code == 2 and "not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert _listing(full) == before
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = run(capsys, calib_cli.main, *_quantize(tiny_model_dir, "--out", a_file))
    assert code == 2 and "not a folder" in err and a_file.read_text() == "x"


@pytest.mark.parametrize("argv,message", [
    (["--eval-text", "nope.txt"], "--eval-text 'nope.txt': no such file"),
    (["--calib", "nope.txt", "--method", "two-step"], "--calib 'nope.txt': no such file"),
    (["--eval-text", "TEXT", "--window", "100000"], "longer than the model's context of 64"),
    (["--report", "/nonexistent/dir/r.json"], "does not exist"),
])
def test_quantize_inputs_checked_before_loading(capsys, tiny_model_dir, text_file, no_model_load, argv, message):
    argv = [str(text_file) if a == "TEXT" else a for a in argv]
    code, _, err = run(capsys, calib_cli.main, *_quantize(tiny_model_dir, *argv))
    assert code == 2 and message in err and "Traceback" not in err


def test_eval_inputs_checked_before_loading(capsys, tiny_model_dir, text_file, no_model_load):
    code, _, err = run(capsys, calib_cli.main, "eval", tiny_model_dir, "--text", text_file, "--window", "100000")
    assert code == 2 and "longer than the model's context of 64" in err
    code, _, err = run(capsys, calib_cli.main, "eval", tiny_model_dir, "--text", "nope.txt")
    assert code == 2 and "no such file" in err


@pytest.mark.parametrize("spec", ["./missing-model", "/nonexistent/model", "out/a/b"])
def test_path_like_missing_model_fails_at_once(capsys, spec, text_file, no_model_load):
    code, _, err = run(capsys, calib_cli.main, "eval", spec, "--text", text_file)
    assert code == 2 and "does not exist" in err
    assert demo_cli.main(["demo", "--model", spec]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_offline_hub_id_fails_fast_naming_alternatives(capsys, monkeypatch, text_file, no_model_load):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, calib_cli.main, "eval", "someone/some-model", "--text", text_file)
    assert code == 2 and "unreachable" in err and "'smollm2'" in err and "local model folder" in err
    code, _, err = run(capsys, calib_cli.main, "quantize", "--calib", "wikitext2", "--model", "x/y")
    assert code == 2 and "--calib builtin" in err


def test_builtin_calibration_text_offline(shared_data):
    from transformers import GPT2TokenizerFast

    from calibration.data import BUILTIN_TEXT, get_calibration_ids

    assert (BUILTIN_TEXT.parent / "README.md").read_text().count("public domain") >= 1
    tok = GPT2TokenizerFast.from_pretrained(shared_data / "gpt2-tokenizer")
    ids = get_calibration_ids("builtin", tok, 32, 256)  # the CLI defaults
    assert tuple(ids.shape) == (32, 256)
    assert calib_cli.build_parser().parse_args(["quantize"]).calib == "builtin"


def test_overwrite_replaces_as_a_whole(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    code, _, err = run(capsys, calib_cli.main, *_quantize(tiny_model_dir, "--out", out, "--overwrite"))
    assert code == 0, err
    assert not (out / "stale.txt").exists() and (out / "quantization_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]  # no temp folders left


def test_ctrl_c_during_work(capsys, monkeypatch, tmp_path, tiny_model_dir):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(calib_cli, "calibrate_model", interrupt)
    out = tmp_path / "ckpt"
    code, _, err = run(capsys, calib_cli.main, *_quantize(tiny_model_dir, "--out", out))
    assert code == 130 and err.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in err
    assert not out.exists()


def test_ctrl_c_during_save_leaves_nothing(capsys, monkeypatch, tmp_path, tiny_model_dir):
    import potkernels.integrations.hf as ser  # save_quantized writes the safetensors file

    real = ser.save_file

    def write_then_interrupt(tensors, path, **kw):
        real(tensors, path, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(ser, "save_file", write_then_interrupt)
    out = tmp_path / "ckpt"
    code, _, err = run(capsys, calib_cli.main, *_quantize(tiny_model_dir, "--out", out))
    assert code == 130 and err.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no output, no temp folder
    # an existing checkpoint survives an interrupted --overwrite untouched
    monkeypatch.setattr(ser, "save_file", real)
    assert run(capsys, calib_cli.main, *_quantize(tiny_model_dir, "--out", out))[0] == 0
    before = _listing(out)
    monkeypatch.setattr(ser, "save_file", write_then_interrupt)
    assert run(capsys, calib_cli.main, *_quantize(tiny_model_dir, "--out", out, "--overwrite"))[0] == 130
    assert _listing(out) == before


def test_checkpoints_detected_and_damaged_ones_refused(capsys, tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "ckpt"
    assert run(capsys, calib_cli.main, *_quantize(tiny_model_dir, "--out", out))[0] == 0
    # the demo and quantize need a float model: a checkpoint is recognised, not re-quantized as float
    assert demo_cli.main(["demo", "--model", str(out)]) == 2
    assert "already a quantized potkernels checkpoint" in capsys.readouterr().err
    code, _, err = run(capsys, calib_cli.main, *_quantize(out))
    assert code == 2 and "already a quantized potkernels checkpoint" in err
    os.remove(out / "quantization_config.json")  # config-less: must not load as a float model
    code, _, err = run(capsys, calib_cli.main, "eval", out, "--text", text_file)
    assert code == 2 and "without its quantization_config.json" in err
    assert demo_cli.main(["demo", "--model", str(out)]) == 2
    assert "without its quantization_config.json" in capsys.readouterr().err
    cfg = out / "config.json"  # no quantization fields either: the packed tensors still give it away
    import json
    d = json.loads(cfg.read_text())
    del d["quantization_config"], d["transformers_weights"]
    cfg.write_text(json.dumps(d))
    code, _, err = run(capsys, calib_cli.main, "eval", out, "--text", text_file)
    assert code == 2 and "packed potkernels tensors" in err


@pytest.mark.parametrize("parser", [calib_cli.build_parser, demo_cli.build_parser])
def test_every_flag_has_help_and_defaults_shown(parser):
    p = parser()
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)][0]
    for name, sp in subs.choices.items():
        if name == "lm_eval":
            continue
        for action in sp._actions:
            assert action.help and len(action.help) > 10, (name, action.dest)
        text = sp.format_help()
        assert "(default:" in text and "(default: None)" not in text


def test_group_size_message(capsys):
    for main in (calib_cli.main, demo_cli.main):
        with pytest.raises(SystemExit):
            main(["quantize" if main is calib_cli.main else "demo", "--group-size", "abc"])
        err = capsys.readouterr().err
        assert "group size must be" in err and "'abc'" in err and "_group_size" not in err


def test_demo_ctrl_c_and_out_refusal(capsys, monkeypatch, tmp_path, tiny_model_dir):
    import potkernels.models

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(potkernels.models, "load_model", interrupt)
    out = tmp_path / "ckpt"
    assert demo_cli.main(["demo", "--model", str(tiny_model_dir), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in err and not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert demo_cli.main(["demo", "--model", str(tiny_model_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


def test_demo_default_out_is_replaced_only_when_it_is_a_checkpoint(tmp_path, monkeypatch, tiny_model_dir):
    from potkernels import PoTConfig, quantize_model, save_quantized

    monkeypatch.chdir(tmp_path)
    cfg = PoTConfig(4, 128)
    args = demo_cli.build_parser().parse_args(["demo", "--model", str(tiny_model_dir)])
    default = demo_cli.default_out(args.model, cfg)
    save_quantized(quantize_model(tiny_gpt2(), PoTConfig(4, 32)), default)  # an earlier demo run
    assert demo_cli.check_demo_inputs(args, cfg) == default and args.overwrite
    (default / "quantization_config.json").unlink()
    (default / "model.safetensors").unlink()
    args = demo_cli.build_parser().parse_args(["demo", "--model", str(tiny_model_dir)])
    with pytest.raises(demo_cli.CliError, match="not empty"):
        demo_cli.check_demo_inputs(args, cfg)

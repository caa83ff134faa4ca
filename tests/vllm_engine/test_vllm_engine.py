"""vLLM serves potkernels checkpoints (CPU, fp32): same greedy tokens as transformers at TP = 1 and 2, the
OpenAI server answers a completion on 127.0.0.1 and stops cleanly, a vLLM without the plugin refuses the
checkpoint, and layers vLLM cannot serve are refused by name.

Each engine runs in its own process (vLLM starts worker processes; a fresh interpreter tears them down).
"""
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vllm_tiny import PROMPT, engine_env, hf_greedy, tiny_llama_checkpoint

HERE = Path(__file__).resolve().parent
N_TOKENS = 12
ENGINE_TIMEOUT = 420  # seconds for one engine process (start, load, generate, stop) on a loaded 2-core box


@pytest.fixture(scope="module")
def pot3_checkpoint(tmp_path_factory):
    path = tiny_llama_checkpoint(tmp_path_factory.mktemp("vllm") / "tiny-pot3", "pot", 3, 128)
    return path, hf_greedy(path, PROMPT, N_TOKENS)


def _vllm_tokens(path: Path, tp: int) -> list[int]:
    run = subprocess.run([sys.executable, str(HERE / "vllm_tiny.py"), str(path), str(tp), str(N_TOKENS)],
                         env=engine_env(tp), capture_output=True, text=True, timeout=ENGINE_TIMEOUT,
                         stdin=subprocess.DEVNULL)
    lines = [l for l in run.stdout.splitlines() if l.startswith("TOKENS ")]
    assert run.returncode == 0 and lines, f"vLLM (TP = {tp}) failed:\n{run.stderr[-4000:]}"
    return json.loads(lines[-1][len("TOKENS "):])


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 2])
def test_llm_greedy_tokens_equal_transformers(pot3_checkpoint, tp):
    # TP = 2 splits q/k/v heads (column), o_proj K = 256 → 128 per rank (clean), and down_proj
    # K = 352 → 176 per rank: not a whole number of 32-code units, and partial groups of G = 128.
    path, hf_tokens = pot3_checkpoint
    assert _vllm_tokens(path, tp) == hf_tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_openai_server_completion_and_clean_stop(pot3_checkpoint, tmp_path):
    path, hf_tokens = pot3_checkpoint
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--skip-tokenizer-init", "--max-model-len", "128",
           "--enforce-eager", "--gpu-memory-utilization", "0.2", "--max-num-seqs", "4"]
    server = subprocess.Popen(cmd, env=engine_env(1), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + ENGINE_TIMEOUT
        while True:  # bounded wait for /health
            assert server.poll() is None, f"server exited early:\n{(tmp_path / 'server.log').read_text()[-4000:]}"
            assert time.monotonic() < deadline, "server not healthy in time"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(2)
        reply = _post(f"http://127.0.0.1:{port}/v1/completions",
                      {"model": str(path), "prompt": PROMPT, "max_tokens": 4, "temperature": 0,
                       "return_token_ids": True}, timeout=120)
        assert reply["choices"][0]["token_ids"] == hf_tokens[:4]
    finally:
        server.terminate()
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
            raise AssertionError("the server did not stop within 60 s of SIGTERM")
        log.close()
    assert code in (0, -15), f"server exit code {code}"


def test_vllm_without_the_plugin_refuses_the_checkpoint(pot3_checkpoint):
    # VLLM_PLUGINS="" loads no general plugin: vLLM must refuse, not load random weights.
    path, _ = pot3_checkpoint
    code = ("from vllm.engine.arg_utils import EngineArgs\n"
            f"EngineArgs(model={str(path)!r}, skip_tokenizer_init=True, dtype='float32').create_model_config()\n")
    env = dict(engine_env(1), VLLM_PLUGINS="")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert run.returncode != 0 and "Unknown quantization method: potkernels" in run.stderr, run.stderr[-3000:]
    # (with the plugin, the same checkpoint serves: the generation tests above)


def test_unservable_layers_are_refused_by_name():
    from vllm.model_executor.layers.linear import QKVParallelLinear

    from potkernels.integrations.checkpoint import CheckpointError
    from potkernels.integrations.vllm import PoTVllmConfig

    cfg = PoTVllmConfig("pot", 3, 128, 2)
    with pytest.raises(CheckpointError, match="quantization_config.json"):
        cfg.get_quant_method(QKVParallelLinear.__new__(QKVParallelLinear), "model.layers.0.self_attn.qkv_proj")
    rec = {"class": "PoTLinear", "in_features": 64, "out_features": 64, "bias": False,
           "config": {"kind": "pot", "bits": 3, "group_size": 128}}
    cfg.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    layer = QKVParallelLinear.__new__(QKVParallelLinear)
    cfg.layers = {"model.layers.0.self_attn.q_proj": rec}  # k_proj, v_proj left in float
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.qkv_proj.*only some"):
        cfg.get_quant_method(layer, "model.layers.0.self_attn.qkv_proj")
    other = dict(rec, config={"kind": "pot", "bits": 4, "group_size": 128})
    cfg.layers = {f"model.layers.0.self_attn.{p}_proj": r for p, r in zip("qkv", (rec, rec, other))}
    with pytest.raises(CheckpointError, match="different codes"):
        cfg.get_quant_method(layer, "model.layers.0.self_attn.qkv_proj")
    cfg.layers["model.layers.0.self_attn.v_proj"] = rec
    assert type(cfg.get_quant_method(layer, "model.layers.0.self_attn.qkv_proj")).__name__ == "PoTLinearMethod"
    with pytest.raises(CheckpointError, match="format version 7"):
        PoTVllmConfig("pot", 3, 128, 7)

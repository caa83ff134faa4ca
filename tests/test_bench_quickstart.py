"""bench/matmul.py and bench/dequant.py from the quick-start install: JSON always, PNG only with
matplotlib (a one-line note otherwise), CPU baseline labelled fp32, --quick as its help says."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script, out, *args, hide_matplotlib=False):
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    pre = []
    if hide_matplotlib:  # as if not installed: `import matplotlib` fails and find_spec returns None
        shim = out / "shim"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
        env["PYTHONPATH"] = f"{shim}{os.pathsep}{ROOT}"
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), "--device", "cpu", *pre, *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))


@pytest.mark.slow
def test_matmul_cpu_without_matplotlib(tmp_path):
    r = _run("matmul.py", tmp_path, "--quick", "--rep", "2", "--warmup", "1", hide_matplotlib=True)
    assert r.returncode == 0, r.stderr[-2000:]
    results = list(tmp_path.rglob("matmul.json"))
    assert len(results) == 1 and not list(tmp_path.rglob("matmul.png"))
    assert "matplotlib is not installed" in r.stdout
    data = json.loads(results[0].read_text())
    assert data["meta"]["baseline"] == "fp32"
    impls = {row["impl"] for row in data["rows"]}
    assert "fp32" in impls and "fp16" not in impls and all("x_fp32" in row for row in data["rows"])
    # --quick on a CPU: SmolLM2 576×1536 only (the quick subset of the CPU smoke test), M in {1, 16}
    assert {(row["K"], row["N"]) for row in data["rows"]} == {(576, 1536)}
    assert {row["M"] for row in data["rows"]} == {1, 16}


def test_save_plot_without_matplotlib(monkeypatch, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import _common

    monkeypatch.setattr(_common.importlib.util, "find_spec", lambda name: None)
    called = []
    assert not _common.save_plot(lambda *a: called.append(a), [], {}, path=tmp_path / "x.png")
    assert not called and "matplotlib is not installed" in capsys.readouterr().out

"""bench/ladder.py's bookkeeping: rows from several runs merge into one table (no model runs here)."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ladder():
    spec = importlib.util.spec_from_file_location("ladder", ROOT / "bench" / "ladder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_file(path: Path, rows: list[tuple], window: int = 2048, max_windows=4) -> Path:
    meta = {"window": window, "windows": 4, "tokens": 8188, "max_windows": max_windows, "commands": [f"cmd {path.stem}"],
            "environment": {"device": "cpu"}, "calib": "valid.txt", "two_step": {"epochs": 2},
            "peak_rss_mib": 1000.0 + len(rows)}
    results = [{"row": r, "bits": b, "group_size": g, "ppl": p} for r, b, g, p in rows]
    path.write_text(json.dumps({**meta, "results": results}))
    return path


def test_merge_joins_rows_into_one_table(ladder, tmp_path):
    a = run_file(tmp_path / "a.json", [("fp", None, None, 24.5), ("rtn-pot", 4, 128, 80.0),
                                       ("pot-init-act", 3, 128, 92.4)])
    b = run_file(tmp_path / "b.json", [("rtn-pot", 2, 64, 1e6), ("pot-two-step-act", 2, 64, 300.0)])
    out = tmp_path / "out"
    assert ladder.main(["--merge", str(a), str(b), "--results", str(out)]) == 0
    merged = json.loads((out / "ladder.json").read_text())
    assert len(merged["results"]) == 5 and merged["commands"] == ["cmd a", "cmd b"] and merged["peak_rss_mib"] == 1003
    md = (out / "ladder.md").read_text()
    assert "| FP (fp32) | 24.50 | 24.50 | 24.50 | 24.50 |" in md
    assert "| RTN PoT | 80.00 | — | — | 1000000.00 |" in md
    assert "| PoT step 1, activation-weighted | — | 92.40 | — | — |" in md
    assert "| PoT two-step, activation-weighted | — | — | — | 300.00 |" in md


def test_merge_refuses_different_windows(ladder, tmp_path):
    a = run_file(tmp_path / "a.json", [("fp", None, None, 24.5)])
    b = run_file(tmp_path / "b.json", [("fp", None, None, 20.0)], max_windows=8)
    with pytest.raises(SystemExit, match="differ in window"):
        ladder.main(["--merge", str(a), str(b), "--results", str(tmp_path / "out")])

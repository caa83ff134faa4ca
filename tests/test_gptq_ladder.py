"""bench/ladder.py: the GPTQ rows, their like-for-like pairs and the merge note reach the table (bookkeeping only,
no model runs)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gptq_rows_and_note_in_merged_table(tmp_path):
    spec = importlib.util.spec_from_file_location("ladder", ROOT / "bench" / "ladder.py")
    ladder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ladder)
    meta = {"window": 2048, "windows": 16, "tokens": 32752, "max_windows": 16, "commands": ["cmd"],
            "environment": {"device": "cpu"}, "calib": "valid.txt", "two_step": {"epochs": 2}, "peak_rss_mib": 1.0}
    rows = [("fp", None, None, 20.8), ("gptq-int", 3, 128, 60.0), ("pot-gptq", 3, 128, 45.0),
            ("pot-gptq-refine", 2, 64, 900.0), ("gptq-int-refine", 2, 64, 1200.0)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps({**meta, "results": [{"row": r, "bits": b, "group_size": g, "ppl": p}
                                                    for r, b, g, p in rows]}))
    out = tmp_path / "out"
    assert ladder.main(["--merge", str(path), "--results", str(out), "--note", "Only some rows ran.",
                        "--name", "lfl"]) == 0
    assert json.loads((out / "lfl.json").read_text())["results"][-1]["row"] == "gptq-int-refine"
    md = (out / "lfl.md").read_text()
    assert "| int GPTQ | — | 60.00 | — | — |" in md
    assert "| PoT GPTQ | — | 45.00 | — | — |" in md
    assert "| PoT GPTQ + frozen-code refine | — | — | — | 900.00 |" in md
    assert "| int GPTQ + frozen-code refine | — | — | — | 1200.00 |" in md
    # the like-for-like twins side by side: PoT ÷ int per column, only where both ran
    assert "| PoT GPTQ ÷ int GPTQ | — | 45 ÷ 60 = 0.75 | — | — |" in md
    assert ("| PoT GPTQ + frozen-code refine ÷ int GPTQ + frozen-code refine | — | — | — | 900 ÷ 1200 = 0.75 |"
            in md)
    assert md.rstrip().endswith("Only some rows ran.")
    assert set(ladder.CALIB_ROWS) < set(ladder.ROWS) and {r for pair in ladder.PAIRS for r in pair} == set(
        ladder.GPTQ_ROWS)

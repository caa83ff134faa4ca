"""bench/e2e.py end to end on the CPU (--dry-run: tiny random Llama, a few greedy steps)."""
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_dry_run_writes_rows_and_phases(tmp_path, one_thread):
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("e2e", ROOT / "bench" / "e2e.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    out = tmp_path / "e2e.json"
    res = e2e.main(["--dry-run", "--variants", "fp16,pot3,int4", "--batches", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert [r["variant"] for r in res["rows"]] == ["fp16", "pot3", "int4"]
    for r in res["rows"]:
        assert r["tokens_per_s"] > 0 and r["mode"] == "eager"
        assert {"prefill_s", "warmup_s", "decode_s", "quantize_s"} <= set(r["phases"])
    assert res["meta"]["dry_run"] and res["meta"]["skipped"] == []
    # a budget already spent skips every variant (and says so in the JSON)
    res = e2e.main(["--dry-run", "--variants", "fp16,pot4", "--batches", "1", "--out", str(out), "--budget-s", "0"])
    assert res["meta"]["skipped"] == ["fp16", "pot4"] and res["rows"] == []

"""Peak memory of GPTQ calibration with and without block streaming (``calibrate_model(offload=True)``).

Each run is a fresh subprocess that loads a float model from a safetensors folder, calibrates it
(3-bit GPTQ, int by default) and reports its peak resident memory (``VmHWM`` of /proc/self/status; ``ru_maxrss``
agrees) after imports, after loading and after calibrating, and a sha256 of its packed state
dict. "in-memory": ``from_pretrained`` whole, then calibrate; "streamed": ``load_lazy`` (blocks on
the meta device, each read memory-mapped when reached) and ``offload=True``. Models: two synthetic
Llamas of one width, one 4x deeper, and SmolLM2-135M (its GGUF dequantized once and saved as
safetensors to a temporary folder). On a CUDA device the runs also report
``torch.cuda.max_memory_allocated``. Run from the repository root:

    python bench/calib_memory.py [--kind int|pot] [--method gptq|init] [--models synthetic smollm2]
    # writes bench/results/<device>/calib_memory_<kind>_<method>_<models>.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, metadata, pick_device, results_dir  # noqa: E402

SYNTH = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=4,
             vocab_size=2048, max_position_embeddings=512, tie_word_embeddings=True)
CALIB = dict(method="gptq", refine=False, scale_fits=0, hessian_batch=4)
# int3 by default: PoT's step-1 scale search (calibration/init.py) holds a transient of about 17x the
# largest stacked linear in fp32 (~390 MiB for a 5632 x 1024 gate/up at hidden 1024), the same at
# every depth, which would hide the depth effect at these sizes; the block loop is the same code.
KINDS = {"int": ("IntConfig", 3, 128), "pot": ("PoTConfig", 3, 128)}


def vm_hwm_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One calibration in this process (``spec``: folder, mode, device, samples, seq_len, seed)."""
    import resource

    from calibration import calibrate_model
    import potkernels.format as fmt
    from potkernels.models import load_lazy
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    device = torch.device(spec["device"])
    out: dict[str, Any] = {"peak_rss_mib_imports": vm_hwm_mib()}
    t0 = time.perf_counter()
    streamed = spec["mode"] == "streamed"
    if streamed:
        model = load_lazy(spec["folder"])
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32).eval()
    out["peak_rss_mib_loaded"] = vm_hwm_mib()
    out["load_seconds"] = time.perf_counter() - t0
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (spec["samples"], spec["seq_len"]), generator=torch.Generator().manual_seed(0))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    cls, bits, group = KINDS[spec["kind"]]
    calib = CALIB if spec["method"] == "gptq" else {"method": "init", "act_weighted": True}
    calibrate_model(model, getattr(fmt, cls)(bits, group), ids, device=device, offload=streamed, progress=False,
                    **calib)
    out["calibrate_seconds"] = time.perf_counter() - t0
    out["peak_rss_mib"] = vm_hwm_mib()
    out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    out["state_sha256"] = h.hexdigest()
    return out


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"child failed: {spec}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_synthetic(folder: Path, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **SYNTH)).save_pretrained(folder)


def save_smollm2(folder: Path) -> None:
    from potkernels.models import load_model

    model, tok = load_model("smollm2")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help="calibration device (default: cuda if available, else cpu)")
    p.add_argument("--layers", type=int, nargs=2, default=(2, 8), help="depths of the two synthetic Llamas")
    p.add_argument("--samples", type=int, default=8, help="calibration windows")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    p.add_argument("--models", nargs="+", choices=("synthetic", "smollm2"), default=("synthetic", "smollm2"),
                   help="the two synthetic Llamas, SmolLM2-135M, or both")
    p.add_argument("--kind", choices=sorted(KINDS), default="int", help="code (3-bit, g128)")
    p.add_argument("--method", choices=("gptq", "init"), default="gptq",
                   help="gptq (settings in CALIB), or init: activation-weighted PoT step 1, block by block "
                        "(the same block loop, minutes less per block on a CPU; needs --kind pot)")
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    device = pick_device(a.device)
    if a.method == "init" and a.kind != "pot":
        p.error("--method init is PoT's step 1: use --kind pot")
    runs = []
    with tempfile.TemporaryDirectory(prefix="calib-memory-") as tmp:
        models = [(f"llama-h{SYNTH['hidden_size']}-L{n}", lambda f, n=n: save_synthetic(f, n)) for n in a.layers
                  if "synthetic" in a.models]
        if "smollm2" in a.models:
            models.append(("smollm2-135m", save_smollm2))
        for name, save in models:
            folder = Path(tmp) / name
            save(folder)
            for mode in ("in-memory", "streamed"):
                spec = {"folder": str(folder), "mode": mode, "device": str(device), "samples": a.samples,
                        "seq_len": a.seq_len, "kind": a.kind, "method": a.method}
                r = {"model": name, "mode": mode, **run_child(spec)}
                runs.append(r)
                print(json.dumps(r), flush=True)
                write_results(runs, device, a)
    print(json.dumps(write_results(runs, device, a)["summary"], indent=1))


def write_results(runs: list[dict[str, Any]], device: torch.device, a: argparse.Namespace) -> dict[str, Any]:
    """The JSON for the runs so far (rewritten after each run, so a cut-short bench keeps what it measured)."""
    by = {(r["model"], r["mode"]): r for r in runs}
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(r["model"] for r in runs):
        if (name, "in-memory") in by and (name, "streamed") in by:
            mem, st = by[(name, "in-memory")], by[(name, "streamed")]
            summary[name] = {"codes_equal": mem["state_sha256"] == st["state_sha256"],
                             "peak_rss_in_memory_mib": mem["peak_rss_mib"], "peak_rss_streamed_mib": st["peak_rss_mib"]}
    shallow, deep = (f"llama-h{SYNTH['hidden_size']}-L{n}" for n in a.layers)
    for mode in ("in-memory", "streamed"):
        if (deep, mode) in by and (shallow, mode) in by:
            ratio = by[(deep, mode)]["peak_rss_mib"] / by[(shallow, mode)]["peak_rss_mib"]
            summary[f"deep_over_shallow_{mode}"] = ratio
    result = {"meta": {**metadata(device), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                       "calibration": {**(CALIB if a.method == "gptq" else {"method": "init", "act_weighted": True}),
                                       "config": f"{a.kind}3 g128", "samples": a.samples,
                                       "seq_len": a.seq_len, "threads": 1},
                       "synthetic": SYNTH, "layers": list(a.layers)},
              "summary": summary, "runs": runs}
    path = results_dir(device) / f"calib_memory_{a.kind}_{a.method}_{'_'.join(a.models)}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()

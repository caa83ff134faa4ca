"""vLLM serving of SmolLM2-135M: tokens/s and peak memory, float vs PoT 4/3/2 vs int4, batch 1 and 16.

Two steps, in two environments (vLLM pins transformers < 5.20, see tests/vllm_engine/run.sh):

    python bench/vllm_serve.py prepare --out /tmp/vllm-bench          # main env: float + RTN checkpoints (g128)
    .venv-vllm/bin/python bench/vllm_serve.py run --ckpts /tmp/vllm-bench [--tp 1]   # vLLM env: timings
    .venv-vllm/bin/python bench/vllm_serve.py check out/smollm2-pot3-g128 --tp 1 3      # vLLM env: tokens vs HF

``run`` starts one vLLM engine per checkpoint in its own process (fp32, eager, greedy, ``ignore_eos``),
generates once to warm up, then times ``--new-tokens`` tokens for a batch of 1 and of 16 prompts.
tokens/s = generated tokens / wall seconds of the ``generate`` call. Peak memory = the largest summed
RSS of the engine process and its children, sampled every 0.1 s (Python, vLLM, weights, the touched
KV cache). On CPU the potkernels method decodes each quantized layer once at load into the activation
dtype, so serving memory and speed are the float model's; the packed checkpoint is smaller on disk.
Writes ``bench/results/<device>/vllm_serve.json`` and ``.png`` (the PNG when matplotlib is importable,
else ``plot`` draws it from the JSON in the main env).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"float": None, "pot4": ("pot", 4), "pot3": ("pot", 3), "pot2": ("pot", 2), "int4": ("int", 4)}
PROMPTS = ["The history of the city begins", "In a quiet village by the sea,", "The main idea of the theory is",
           "Once upon a time there was"]


def prepare(out: Path) -> None:
    """Float SmolLM2 (+ tokenizer) and RTN PoT 4/3/2 / int4 g128 checkpoints of it, under ``out``."""
    import copy

    sys.path.insert(0, str(REPO))
    from potkernels.format import config_from_dict
    from potkernels.integrations import quantize_model, save_quantized
    from potkernels.models import load_model

    model, tok = load_model("smollm2")
    model.config.architectures = [type(model).__name__]
    for name, code in CONFIGS.items():
        folder = out / name
        if code is None:
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            continue
        q = quantize_model(copy.deepcopy(model), config_from_dict({"kind": code[0], "bits": code[1], "group_size": 128}))
        save_quantized(q, folder, tokenizer=tok)
        print(f"{name}: {folder}", flush=True)


def _engine(path: str, tp: int, new_tokens: int) -> None:
    """Child process: one engine, warm-up, then batch 1 and 16; prints one JSON line."""
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model=path, tensor_parallel_size=tp, dtype="float32", max_model_len=512, enforce_eager=True,
              gpu_memory_utilization=0.2, max_num_seqs=16, seed=0)
    load_s = time.perf_counter() - t0
    sp = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    llm.generate(PROMPTS[:1], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), use_tqdm=False)
    rows = {"load_s": round(load_s, 1)}
    for batch in (1, 16):
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        t = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        rows[f"batch{batch}"] = {"tokens": n, "seconds": round(dt, 3), "tok_s": round(n / dt, 2)}
        if batch == 1:
            rows["greedy_tokens"] = list(outs[0].outputs[0].token_ids[:16])
    print("RESULT " + json.dumps(rows), flush=True)


def _tokens(path: str, tp: int, new_tokens: int) -> None:
    """Child process: greedy tokens of PROMPTS[0] through vLLM at ``tp``; prints one JSON line."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, tensor_parallel_size=tp, dtype="float32", max_model_len=256, enforce_eager=True,
              gpu_memory_utilization=0.2, max_num_seqs=4, seed=0)
    out = llm.generate(PROMPTS[:1], SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True),
                       use_tqdm=False)
    print("RESULT " + json.dumps(list(out[0].outputs[0].token_ids)), flush=True)


def check(path: Path, tps: list[int], new_tokens: int, timeout: int) -> dict:
    """Greedy tokens of transformers' ``from_pretrained`` (potkernels quantizer) vs vLLM at each TP."""
    import potkernels
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    potkernels.integrations.cache_decoded_weights(model)
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                        eos_token_id=None, pad_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
    del model
    result = {"checkpoint": str(path), "prompt": PROMPTS[0], "transformers": hf, "vllm": {}}
    for tp in tps:
        run = subprocess.run([sys.executable, __file__, "_tokens", str(path), str(tp), str(new_tokens)],
                             env=_engine_env(tp), capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
        if run.returncode != 0 or not lines:
            raise SystemExit(f"TP = {tp}: vLLM failed\n{run.stderr[-3000:]}")
        result["vllm"][str(tp)] = json.loads(lines[-1][len("RESULT "):])
        print(f"TP = {tp}: equal to transformers: {result['vllm'][str(tp)] == hf}", flush=True)
    result["text"] = tok.decode(hf)
    return result


def _engine_env(tp: int) -> dict[str, str]:
    """vLLM CPU settings: 1 GiB KV cache, ranks bound to cores (shared when there are fewer cores than ranks)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cores = os.cpu_count() or 1
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // tp)))
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(
        f"{r * (cores // tp)}-{(r + 1) * (cores // tp) - 1}" if cores >= tp else str(r % cores) for r in range(tp)))
    return env


def _peak_rss(proc: subprocess.Popen, stop: threading.Event, peak: list[int]) -> None:
    import psutil

    root = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            peak[0] = max(peak[0], total)
        except psutil.Error:
            pass
        time.sleep(0.1)


def _dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def run(ckpts: Path, tp: int, new_tokens: int, timeout: int) -> dict:
    env = _engine_env(tp)
    rows = {}
    for name in CONFIGS:
        folder = ckpts / name
        if not folder.is_dir():
            raise SystemExit(f"{folder} missing: run `python bench/vllm_serve.py prepare --out {ckpts}` first")
        proc = subprocess.Popen([sys.executable, __file__, "_engine", str(folder), str(tp), str(new_tokens)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        stop, peak = threading.Event(), [0]
        watcher = threading.Thread(target=_peak_rss, args=(proc, stop, peak), daemon=True)
        watcher.start()
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            stop.set()
            watcher.join()
        lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"{name}: vLLM failed\n{err[-3000:]}")
        row = json.loads(lines[-1][len("RESULT "):])
        row.update(peak_rss_gib=round(peak[0] / 2**30, 3), checkpoint_mib=round(_dir_bytes(folder) / 2**20, 1))
        rows[name] = row
        print(f"{name:6s} load {row['load_s']:6.1f} s  batch1 {row['batch1']['tok_s']:7.2f} tok/s  "
              f"batch16 {row['batch16']['tok_s']:7.2f} tok/s  peak RSS {row['peak_rss_gib']:.2f} GiB  "
              f"weights file {row['checkpoint_mib']:.0f} MiB", flush=True)
    return rows


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["rows"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in ((axes[0], "batch1", "tokens/s, batch 1"), (axes[1], "batch16", "tokens/s, batch 16")):
        ax.bar(names, [result["rows"][n][key]["tok_s"] for n in names], color="tab:blue")
        ax.set_title(label)
    axes[2].bar(names, [result["rows"][n]["peak_rss_gib"] for n in names], color="tab:orange", label="peak RSS")
    axes[2].set_title("peak RSS (GiB), engine + workers")
    fig.suptitle(f"vLLM {result['vllm']} serving SmolLM2-135M, fp32, {result['device']}, TP = {result['tp']} "
                 f"(load avg {result['loadavg_before']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_engine", "_tokens"):
        (_engine if sys.argv[1] == "_engine" else _tokens)(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the float and quantized checkpoints (main environment)")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run", help="serve each checkpoint with vLLM and time it (vLLM environment)")
    r.add_argument("--ckpts", type=Path, required=True)
    r.add_argument("--tp", type=int, default=1)
    r.add_argument("--new-tokens", type=int, default=64)
    r.add_argument("--timeout", type=int, default=900, help="seconds per engine process")
    r.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "cpu-x86-64-x2")
    c = sub.add_parser("check", help="greedy tokens: transformers vs vLLM at each TP (vLLM environment)")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("--tp", type=int, nargs="+", default=[1])
    c.add_argument("--new-tokens", type=int, default=16)
    c.add_argument("--timeout", type=int, default=900)
    c.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "cpu-x86-64-x2")
    g = sub.add_parser("plot", help="draw the PNG from a results JSON (main environment)")
    g.add_argument("json", type=Path)
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.out)
    elif args.cmd == "check":
        result = check(args.checkpoint, args.tp, args.new_tokens, args.timeout)
        result["loadavg"] = open("/proc/loadavg").read().split()[0]
        out = args.results / f"vllm_check_{args.checkpoint.name}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(out)
    elif args.cmd == "plot":
        plot(json.loads(args.json.read_text()), args.json.with_suffix(".png"))
    else:
        import platform

        import torch
        import vllm

        before = open("/proc/loadavg").read().split()[0]
        rows = run(args.ckpts, args.tp, args.new_tokens, args.timeout)
        result = {"device": f"cpu {platform.machine()} x{os.cpu_count()}", "python": platform.python_version(),
                  "torch": torch.__version__, "vllm": vllm.__version__, "tp": args.tp, "dtype": "float32",
                  "new_tokens": args.new_tokens, "loadavg_before": before,
                  "loadavg_after": open("/proc/loadavg").read().split()[0], "rows": rows}
        args.results.mkdir(parents=True, exist_ok=True)
        out = args.results / ("vllm_serve.json" if args.tp == 1 else f"vllm_serve_tp{args.tp}.json")
        out.write_text(json.dumps(result, indent=1) + "\n")
        try:
            plot(result, out.with_suffix(".png"))
        except ImportError:
            print(f"matplotlib missing here: run `python bench/vllm_serve.py plot {out}` in the main environment")
        print(out)


if __name__ == "__main__":
    main()

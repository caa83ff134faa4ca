"""QAT of SmolLM2-135M (Llama architecture) through the PoT codes; perplexity before / after.

    python bench/smollm2_qat.py --bits 4 --steps 300                     # GPU-sized run, on CPU slow
    python bench/smollm2_qat.py --steps 20 --max-windows 4 --threads 1   # short CPU measurement
    python bench/smollm2_qat.py --device cuda --bits 3 --steps 500 --amp

Model: ``potkernels.models.load_model("smollm2")`` (offline GGUF, dequantized to fp32). Every linear
layer except ``lm_head`` (tied to the embeddings) becomes a QAT layer; 576 input columns with
group 128 give a partial last group. Training text: WikiText-2 *validation* (word-tokenized
file, calibration only), random windows of ``--seq-len``; loss = (1 − kd) · CE + kd · KL to the FP
model. Evaluation: WikiText-2 raw *test*, standard perplexity, non-overlapping windows of
``--eval-window`` tokens, the first ``--max-windows`` of them (stated in the results).
"before" is the QAT model at step 0 — with ``--init rtn`` exactly PoT RTN (same codes and
scales); "after" is the packed model exported by ``convert`` (its logits equal the QAT model's).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration.eval import perplexity, read_text, tokenize_text  # noqa: E402
from calibration.qat import (  # noqa: E402
    convert, prepare_qat, qat_layers, sample_from_teacher, scales_from_quantized, train_qat,
)
from calibration.train import RandomWindows  # noqa: E402
from potkernels import IntConfig, PoTConfig  # noqa: E402
from potkernels.models import load_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def peak_rss_gb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def initial_scales(args, fp, cfg, calib: torch.Tensor):
    """``init`` argument of prepare_qat: 'rtn', 'init' (PoTPTQ step 1), or the scales of the
    activation-weighted step 1 ('act-init') or of two-step calibration, on ``--calib-windows``."""
    if args.init in ("rtn", "init"):
        return args.init
    try:
        from calibration import calibrate_model
    except ImportError as e:
        raise SystemExit(f"--init two-step needs calibration.calibrate_model (the calibrator), missing here: {e}")
    gen = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(0, calib.numel() - args.seq_len, (args.calib_windows,), generator=gen).tolist()
    windows = torch.stack([calib[i : i + args.seq_len] for i in starts])
    method = "init" if args.init == "act-init" else "two-step"
    return scales_from_quantized(calibrate_model(copy.deepcopy(fp), cfg, windows, method=method, act_weighted=True,
                                                 progress=False))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="'smollm2' (offline), a local folder or a hub id")
    p.add_argument("--code", choices=["pot", "int"], default="pot")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128, help="0 = per channel")
    p.add_argument("--init", choices=["rtn", "init", "act-init", "two-step"], default="rtn",
                   help="start scales: RTN, step 1, activation-weighted step 1, or two-step (act-weighted)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--scale-lr", type=float, default=5e-3)
    p.add_argument("--kd-weight", type=float, default=0.5)
    p.add_argument("--data-free", type=int, metavar="N",
                   help="train on N sequences sampled from the FP model instead of WikiText-2 (use --kd-weight 1)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--calib-windows", type=int, default=128, help="windows for --init act-init / two-step")
    p.add_argument("--eval-window", type=int, default=2048)
    p.add_argument("--max-windows", type=int, help="evaluate only the first N windows of the test text")
    p.add_argument("--skip-fp-eval", action="store_true")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (less activation memory)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for training (GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "smollm2_qat"))
    p.add_argument("--data", default=str(DATA))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch sees no GPU")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    group = None if args.group_size == 0 else args.group_size
    cfg = PoTConfig(args.bits, group) if args.code == "pot" else IntConfig(args.bits, group)

    fp, tok = load_model(args.model, dtype=torch.float32, device=args.device)
    test = tokenize_text(read_text(Path(args.data) / "wikitext-2-raw" / "wiki.test.raw"), tok)
    calib = tokenize_text(read_text(Path(args.data) / "wikitext-2" / "valid.txt"), tok)
    window = min(args.eval_window, fp.config.max_position_embeddings)

    def ppl(model) -> dict:
        model.eval()
        t = time.perf_counter()
        r = perplexity(model, test, window=window, max_windows=args.max_windows)
        r["seconds"] = time.perf_counter() - t
        print(json.dumps(r))
        return r

    res: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "config": cfg.to_dict(),
                 "args": vars(args), "eval": {"text": "wikitext-2-raw wiki.test.raw", "window": window,
                                              "max_windows": args.max_windows, "tokens_total": test.numel()}}
    if not args.skip_fp_eval:
        res["fp"] = ppl(fp)
    teacher = fp if args.kd_weight > 0 else None
    model = prepare_qat(copy.deepcopy(fp), cfg, init=initial_scales(args, fp, cfg, calib))
    if teacher is None:
        del fp
    res["n_qat_layers"] = len(list(qat_layers(model)))
    res["before"] = ppl(model)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    if args.data_free:
        # LLM-QAT style: train on the FP model's own samples, distillation only (no corpus needed)
        if teacher is None:
            raise SystemExit("--data-free needs --kd-weight > 0 (the FP model is the teacher)")
        t = time.perf_counter()
        texts = sample_from_teacher(teacher, args.data_free, args.seq_len, batch_size=args.batch, seed=args.seed)
        res["data_free"] = {"sequences": args.data_free, "seconds": time.perf_counter() - t}
        batches = list(texts.split(args.batch))
    else:
        batches = RandomWindows(calib, args.seq_len, args.batch, seed=args.seed)
    hist = train_qat(model, batches, args.steps, args.lr,
                     scale_lr=args.scale_lr, teacher=teacher, kd_weight=args.kd_weight,
                     warmup=min(20, args.steps // 10), log_every=args.log_every,
                     autocast_dtype=torch.bfloat16 if args.amp else None)
    res["train"] = {"steps": args.steps, "seconds": hist["seconds"], "sec_per_step": hist["sec_per_step"],
                    "tokens_per_step": args.batch * args.seq_len, "first_loss": hist["loss"][0],
                    "last10_loss": sum(hist["loss"][-10:]) / len(hist["loss"][-10:]),
                    "peak_cuda_mem_gb": hist["peak_cuda_mem_gb"], "peak_rss_gb": peak_rss_gb()}
    if args.grad_ckpt:
        model.gradient_checkpointing_disable()
    convert(model)
    res["after"] = ppl(model)
    res["peak_rss_gb"] = peak_rss_gb()
    res["wall_seconds"] = time.perf_counter() - t0
    res["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                       "transformers": __import__("transformers").__version__, "threads": torch.get_num_threads(),
                       "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    tr = res["train"]
    lines = [
        f"# SmolLM2-135M QAT ({args.code} {args.bits}-bit, group {group or 'channel'}, init {args.init})", "",
        f"Command: `{res['command']}`  ",
        f"Device: {args.device} ({res['versions']['gpu'] or str(res['versions']['threads']) + ' torch threads'}), "
        f"torch {torch.__version__}; wall {res['wall_seconds'] / 60:.1f} min; peak RSS {res['peak_rss_gb']:.2f} GB.  ",
        f"Eval: WikiText-2 raw test, windows of {window}, first {args.max_windows or 'all'} windows.  ",
        f"Train: {args.steps} steps × {args.batch}×{args.seq_len} tokens of "
        f"{f'{args.data_free} FP-model samples' if args.data_free else 'WikiText-2 valid'}, lr {args.lr}, "
        f"scale lr {args.scale_lr}, KD {args.kd_weight}: {tr['sec_per_step']:.2f} s/step, loss "
        f"{tr['first_loss']:.3f} → {tr['last10_loss']:.3f} (mean of last 10).", "",
        "| model | ppl |", "|---|---|",
    ]
    if "fp" in res:
        lines.append(f"| FP | {res['fp']['ppl']:.3f} |")
    lines += [f"| before QAT (init {args.init}) | {res['before']['ppl']:.3f} |",
              f"| after QAT (packed) | {res['after']['ppl']:.3f} |"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Tiny-Shakespeare experiment: a character-level GPT-2 trained from scratch, then FP vs PTQ vs QAT.

One command (defaults finish on a 2-core CPU; ``--large --device cuda`` for a GPU)::

    python bench/shakespeare.py                      # small model, writes bench/results/shakespeare.{json,md}
    python bench/shakespeare.py --fp-checkpoint out/shakespeare/fp-small   # reuse the trained FP model
    python bench/shakespeare.py --large --device cuda

Data: ../shared/data/tinyshakespeare.txt (or ``--data``), first 90 % for training, last 10 %
for validation. Character level (65 symbols): a small model learns it in minutes on a CPU, and the
embedding/LM head stay small so most weights sit in the quantized ``Conv1D`` layers.
Metric: standard perplexity over the validation text (non-overlapping windows of the block size,
``calibration.eval.perplexity``) and bits per character (mean NLL / ln 2).

Rows at each bit width (same group size): FP | int RTN | PoT RTN | calibrated PTQ rows from
``calibration.calibrate_model`` (PoT two-step as in the paper and activation-weighted, int GPTQ,
PoT GPTQ, PoT GPTQ + frozen-E refine; ``--calibrated`` picks them) | int QAT | PoT QAT (``--no-qat``). QAT starts from RTN scales, trains with ``train_qat`` (CE + optional
distillation from the FP model), then exports with ``convert``; the exported packed model is what
is evaluated, and its logits are checked to equal the QAT model's (on the reference decode path;
on a GPU the evaluation itself uses the default, Triton, path). "gap closed" =
(ppl_RTN − ppl_QAT) / (ppl_RTN − ppl_FP) for the same code.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration.eval import perplexity  # noqa: E402
from calibration.qat import convert, prepare_qat, train_qat  # noqa: E402
from calibration.train import RandomWindows, train_lm  # noqa: E402
from potkernels import IntConfig, PoTConfig, quantize_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@dataclass
class Setup:
    """Model and schedule of one experiment size."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block: int = 128
    batch: int = 16
    fp_steps: int = 1500
    fp_lr: float = 2e-3
    qat_steps: int = 200
    qat_lr: float = 2e-4
    qat_scale_lr: float = 1e-2
    kd_weight: float = 0.5
    group_size: int | None = 64
    calib_windows: int = 128    # two-step calibration: train windows of `block` tokens,
    calib_batch: int = 2        # windows per step-2 Adam step,
    calib_epochs: int = 4       # epochs over them (the calibrator's defaults)


SMALL = Setup()
LARGE = Setup(n_layer=6, n_head=6, n_embd=384, block=256, batch=64, fp_steps=5000, fp_lr=1e-3,
              qat_steps=1000, qat_lr=1e-4, group_size=128)


def char_data(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(train ids, validation ids, vocabulary): characters → ids, 90 % / 10 % split."""
    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    stoi = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], vocab


def new_model(s: Setup, vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_positions=s.block, n_embd=s.n_embd, n_layer=s.n_layer,
                     n_head=s.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def evaluate(model, val: torch.Tensor, block: int) -> dict:
    model.eval()
    r = perplexity(model, val, window=block, batch_size=64)
    return {"ppl": r["ppl"], "bpc": r["nll"] / math.log(2), "tokens": r["tokens"], "window": block}


def fp_model(args, s: Setup, train: torch.Tensor, vocab: list[str], device: str):
    """Load the FP checkpoint, or train one and save it (``--out-dir``)."""
    from transformers import GPT2LMHeadModel

    if args.fp_checkpoint:
        ckpt = Path(args.fp_checkpoint)
        saved = json.loads((ckpt / "vocab.json").read_text())
        if saved != vocab:
            raise ValueError(f"{ckpt} was trained on another character vocabulary")
        model = GPT2LMHeadModel.from_pretrained(ckpt).to(device)
        if model.config.n_positions != s.block:
            raise ValueError(f"{ckpt} has block {model.config.n_positions}, this setup uses {s.block}")
        return model, {"loaded_from": str(ckpt)}
    torch.manual_seed(args.seed)
    model = new_model(s, len(vocab)).to(device)
    hist = train_lm(model, RandomWindows(train, s.block, s.batch, seed=args.seed), s.fp_steps, s.fp_lr,
                    warmup=min(100, s.fp_steps // 10), weight_decay=0.1, min_lr_ratio=0.02, log_every=args.log_every)
    out = Path(args.out_dir) / f"fp-{'large' if args.large else 'small'}"
    model.save_pretrained(out)
    (out / "vocab.json").write_text(json.dumps(vocab))
    print(f"saved the FP model to {out} (reuse with --fp-checkpoint {out})")
    return model, {"trained_steps": s.fp_steps, "train_seconds": hist["seconds"], "sec_per_step": hist["sec_per_step"],
                   "final_train_loss": sum(hist["ce"][-20:]) / len(hist["ce"][-20:]), "saved_to": str(out)}


def calibration_windows(train: torch.Tensor, s: Setup, seed: int) -> torch.Tensor:
    """``s.calib_windows`` random train windows of ``s.block`` characters (seeded): LongTensor ``[n, block]``."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, train.numel() - s.block, (s.calib_windows,), generator=gen).tolist()
    return torch.stack([train[i : i + s.block] for i in starts])


# Calibrated rows: label → (code, calibrate_model keyword arguments).
CALIBRATED = {
    "PoT two-step": ("pot", {"method": "two-step", "act_weighted": False}),  # the paper's, as first committed
    "PoT two-step, act-weighted": ("pot", {"method": "two-step", "act_weighted": True}),
    "int GPTQ": ("int", {"method": "gptq"}),
    "PoT GPTQ": ("pot", {"method": "gptq"}),
    "PoT GPTQ + refine": ("pot", {"method": "gptq", "refine": True}),
}


def calibrated(fp, cfg, train: torch.Tensor, s: Setup, seed: int, **kwargs):
    """A copy of ``fp`` through ``calibration.calibrate_model(**kwargs)`` on train windows; (model, note)."""
    try:
        from calibration import calibrate_model
    except ImportError as e:
        return None, f"unavailable in this checkout ({e}); filled once the calibrator (calibration.calibrate_model) is merged"
    calib = calibration_windows(train, s, seed)
    model = calibrate_model(copy.deepcopy(fp), cfg, calib, epochs=s.calib_epochs, batch_size=s.calib_batch,
                            progress=False, **kwargs)
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    steps = f", batch {s.calib_batch}, {s.calib_epochs} epochs" if kwargs["method"] == "two-step" or \
        kwargs.get("refine") else ""
    return model, f"calibrate_model({args}): {s.calib_windows} train windows of {s.block}{steps}"


def qat(fp, cfg, train: torch.Tensor, val: torch.Tensor, s: Setup, args) -> tuple:
    """prepare_qat → train_qat (CE + KD from the FP model) → convert; checks the export is exact."""
    torch.manual_seed(args.seed)
    model = prepare_qat(copy.deepcopy(fp), cfg, init="rtn")
    hist = train_qat(model, RandomWindows(train, s.block, s.batch, seed=args.seed + cfg.bits), s.qat_steps,
                     s.qat_lr, scale_lr=s.qat_scale_lr, teacher=fp if s.kd_weight > 0 else None,
                     kd_weight=s.kd_weight, warmup=min(30, s.qat_steps // 10), log_every=args.log_every)
    model.eval()
    probe = val[: 4 * s.block].view(4, s.block).to(next(model.parameters()).device)
    with torch.no_grad():
        before = model(probe).logits
        convert(model)
        packed = [m for m in model.modules() if hasattr(m, "backend")]
        for m in packed:  # the check runs on the reference decode (on a GPU the default is Triton)
            m.backend = "torch"
        exact = bool(torch.equal(model(probe).logits, before))
        for m in packed:
            m.backend = None
    info = {"steps": s.qat_steps, "train_seconds": hist["seconds"], "sec_per_step": hist["sec_per_step"],
            "export_logits_equal": exact}
    return model, info


def fp_continued(fp, train: torch.Tensor, s: Setup, args):
    """Control: the FP model trained further with the QAT recipe (steps, lr, distillation), unquantized.

    QAT trains the weights again; if the FP model still has slack, part of a QAT gain is plain
    extra training. This row measures that part.
    """
    torch.manual_seed(args.seed)
    model = copy.deepcopy(fp)
    hist = train_lm(model, RandomWindows(train, s.block, s.batch, seed=args.seed), s.qat_steps, s.qat_lr,
                    teacher=fp if s.kd_weight > 0 else None, kd_weight=s.kd_weight,
                    warmup=min(30, s.qat_steps // 10), log_every=args.log_every)
    return model, {"steps": s.qat_steps, "train_seconds": hist["seconds"], "sec_per_step": hist["sec_per_step"]}


def run(args) -> dict:
    s = LARGE if args.large else SMALL
    overrides = {k: getattr(args, k) for k in ("fp_steps", "qat_steps", "qat_lr", "qat_scale_lr", "kd_weight",
                                               "calib_windows", "calib_batch", "calib_epochs")
                 if getattr(args, k) is not None}
    if args.group_size is not None:
        overrides["group_size"] = None if args.group_size == 0 else args.group_size
    s = replace(s, **overrides)
    device = args.device
    train, val, vocab = char_data(Path(args.data))
    t_start = time.perf_counter()
    fp, fp_info = fp_model(args, s, train, vocab, device)
    rows: list[dict] = []

    def add(method, bits, model, seconds, **extra):
        r = {"method": method, "bits": bits, **(evaluate(model, val, s.block) if model is not None else {}),
             "seconds": round(seconds, 1), **extra}
        rows.append(r)
        print(json.dumps(r))

    t = time.perf_counter()
    add("FP", 32, fp, 0.0, **fp_info)
    if not args.no_control:
        t = time.perf_counter()
        model, info = fp_continued(fp, train, s, args)
        add("FP continued (control)", 32, model, time.perf_counter() - t, **info)
    for bits in args.bits:
        pot, intc = PoTConfig(bits, s.group_size), IntConfig(bits, s.group_size)
        codes = [(n, c) for n, c in (("int", intc), ("PoT", pot)) if n.lower() in args.codes]
        for name, cfg in codes:
            t = time.perf_counter()
            add(f"{name} RTN", bits, quantize_model(copy.deepcopy(fp), cfg), time.perf_counter() - t)
        for label in args.calibrated:
            code, kwargs = CALIBRATED[label]
            if code not in args.codes:
                continue
            t = time.perf_counter()
            try:
                model, note = calibrated(fp, pot if code == "pot" else intc, train, s, args.seed, **kwargs)
            except Exception as e:  # an API mismatch must not cost the QAT rows; it is reported
                model, note = None, f"failed: {type(e).__name__}: {e}"
            add(label, bits, model, time.perf_counter() - t, note=note)
        if args.no_qat:
            continue
        for name, cfg in codes:
            name = f"{name} QAT"
            t = time.perf_counter()
            model, info = qat(fp, cfg, train, val, s, args)
            add(name, bits, model, time.perf_counter() - t, **info)
    fp_ppl = rows[0]["ppl"]
    control = next((r["ppl"] for r in rows if r["method"].startswith("FP continued")), None)
    for r in rows:
        if r["method"].endswith("QAT"):
            code = r["method"].split()[0]
            rtn = next(x for x in rows if x["method"] == f"{code} RTN" and x["bits"] == r["bits"])
            gap = rtn["ppl"] - fp_ppl
            r["gap_closed"] = (rtn["ppl"] - r["ppl"]) / gap if gap > 0 else None
            if control is not None and rtn["ppl"] > control:
                r["gap_closed_vs_control"] = (rtn["ppl"] - r["ppl"]) / (rtn["ppl"] - control)
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setup": asdict(s), "device": device, "threads": torch.get_num_threads(),
        "tokenization": f"character level, {len(vocab)} symbols",
        "split": {"train_chars": train.numel(), "val_chars": val.numel()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__, "machine": platform.machine(),
                     "processor": platform.processor() or platform.machine(),
                     "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None},
        "wall_seconds": time.perf_counter() - t_start,
        "rows": rows,
    }


def markdown(res: dict) -> str:
    s = res["setup"]
    lines = [
        "# Tiny Shakespeare: FP vs PTQ vs QAT (character-level GPT-2)", "",
        f"Command: `{res['command']}`  ",
        f"Device: {res['device']} ({res['versions']['gpu'] or str(res['threads']) + ' torch threads'}); "
        f"torch {res['versions']['torch']}, transformers {res['versions']['transformers']}, "
        f"python {res['versions']['python']}; wall time {res['wall_seconds'] / 60:.1f} min.  ",
        f"Model: GPT2LMHeadModel {s['n_layer']} layers × {s['n_embd']} (heads {s['n_head']}), block {s['block']}, "
        f"{res['tokenization']}; quantized: every Conv1D (LM head tied to the float embedding). "
        f"Group size {s['group_size'] or 'per channel'}.  ",
        f"Training: FP {s['fp_steps']} steps batch {s['batch']} lr {s['fp_lr']}; QAT {s['qat_steps']} steps "
        f"lr {s['qat_lr']} (scale gains {s['qat_scale_lr']}), KD weight {s['kd_weight']}, from RTN scales.  ",
        f"Validation: last 10 % ({res['split']['val_chars']} chars), non-overlapping windows of {s['block']}.", "",
        "| method | bits | val ppl | bits/char | gap closed | gap closed vs control | time (s) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ppl = f"{r['ppl']:.4f}" if "ppl" in r else "—"
        bpc = f"{r['bpc']:.4f}" if "bpc" in r else "—"
        gap = f"{100 * r['gap_closed']:.1f} %" if r.get("gap_closed") is not None else ""
        gap_c = f"{100 * r['gap_closed_vs_control']:.1f} %" if r.get("gap_closed_vs_control") is not None else ""
        note = r.get("note", "")
        if "export_logits_equal" in r:
            note = f"{r['sec_per_step']:.3f} s/step; exported logits equal QAT: {r['export_logits_equal']}"
        elif "sec_per_step" in r:
            note = f"{r['sec_per_step']:.3f} s/step"
        bits = "fp32" if r["bits"] == 32 else r["bits"]
        lines.append(f"| {r['method']} | {bits} | {ppl} | {bpc} | {gap} | {gap_c} | {r['seconds']} | {note} |")
    lines += ["", "gap closed = (ppl_RTN − ppl_QAT) / (ppl_RTN − ppl_FP), same code and bits. "
              "The control is the FP model trained further with the QAT recipe (same steps, lr, distillation) "
              "but unquantized; gap closed vs control uses its ppl in place of ppl_FP, so extra training "
              "alone does not count as closing the gap."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--large", action="store_true", help="bigger model, more steps (meant for a GPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--fp-checkpoint", help="folder of a saved FP model: skip FP training")
    p.add_argument("--out-dir", default=str(ROOT / "out" / "shakespeare"), help="where the FP model is saved")
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "shakespeare"),
                   help="results path without extension (.json and .md are written)")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    p.add_argument("--codes", nargs="+", choices=["pot", "int"], default=["pot", "int"])
    p.add_argument("--no-control", action="store_true", help="leave out the 'FP continued' control row")
    p.add_argument("--calibrated", nargs="*", choices=list(CALIBRATED), default=list(CALIBRATED),
                   help="calibrated PTQ rows (calibration.calibrate_model); none: leave them out")
    p.add_argument("--no-qat", action="store_true", help="leave out the QAT rows")
    p.add_argument("--group-size", type=int, help="override the setup's group size (0 = per channel)")
    p.add_argument("--fp-steps", type=int)
    p.add_argument("--qat-steps", type=int)
    p.add_argument("--qat-lr", type=float)
    p.add_argument("--qat-scale-lr", type=float)
    p.add_argument("--kd-weight", type=float)
    p.add_argument("--calib-windows", type=int, help="calibrated rows: calibration windows")
    p.add_argument("--calib-batch", type=int, help="two-step / refine: windows per Adam step")
    p.add_argument("--calib-epochs", type=int, help="two-step / refine: epochs of step 2")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch sees no GPU")
    res = run(args)
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()

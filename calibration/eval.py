"""Evaluation: standard perplexity, and lm-eval on the in-memory model over a local text file.

Perplexity (the project's number): concatenate the text, tokenize once, non-overlapping
windows, exp(mean token NLL). ``lm_eval_text`` runs EleutherAI's harness on the same model
object (quantized or not) with a task built here for a local file, so it works offline.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from potkernels.nn import _PackedLinear


def tokenize_text(text: str, tokenizer) -> torch.Tensor:
    """The whole text as one 1-D LongTensor of token ids (tokenized once)."""
    if not text.strip():
        raise ValueError("evaluation text is empty")
    return torch.tensor(tokenizer(text, return_attention_mask=False)["input_ids"], dtype=torch.long)


@contextlib.contextmanager
def decoded_once(model: torch.nn.Module) -> Iterator[int]:
    """While inside, every packed layer of ``model`` on the CPU decodes its weight once and keeps it.

    A CPU has no decode kernel, so a packed layer otherwise decodes its whole weight at every forward;
    an evaluation of many windows then costs many decodes per layer. The kept weight is the one the
    reference path decodes (same logits, bit for bit). Memory while inside: one decoded copy per layer in
    the activation dtype (fp32: 4 bytes per weight). On exit each layer's cache setting is restored and the
    copies made here are dropped. Layers on a GPU are left alone (their kernels decode in registers).
    Yields the number of layers switched.
    """
    layers = [m for m in model.modules() if isinstance(m, _PackedLinear) and not m.cache_decoded
              and m.qweight.device.type == "cpu"]
    for m in layers:
        m.cache_decoded = True
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.cache_decoded, m._decoded = False, None


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} not found")
    return path.read_text(encoding="utf-8")


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, window: int, max_windows: int | None = None, batch_size: int = 1,
               progress: bool = False) -> dict:
    """Perplexity of ``model`` over 1-D token ``ids`` in non-overlapping windows of ``window`` tokens.

    Every window is scored on its tokens 2…window (the first has no context); a trailing partial
    window is dropped. Returns ``{"ppl", "nll", "tokens", "windows", "window", "window_nll"}``
    (``window_nll``: each window's mean NLL, so the perplexity of any prefix of windows can be read off).
    Packed layers on the CPU decode their weights once for the whole run (:func:`decoded_once`).
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    n_windows = ids.numel() // window
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {window}")
    device = next(model.parameters()).device
    chunks = ids[: n_windows * window].view(n_windows, window)
    window_nll: list[float] = []  # mean NLL of each window, in order
    with decoded_once(model):
        for i in tqdm(range(0, n_windows, batch_size), disable=not progress, desc="ppl"):
            batch = chunks[i : i + batch_size].to(device)
            logits = model(batch).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
            ).view(batch.shape[0], -1)
            window_nll += nll.double().mean(dim=1).tolist()
    mean = sum(window_nll) / n_windows  # every window scores window - 1 tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": n_windows * (window - 1), "windows": n_windows,
            "window": window, "window_nll": window_nll}


def default_window(model, cap: int = 2048) -> int:
    """The model's context length (``max_position_embeddings`` / ``n_positions``), capped at ``cap``."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return min(cap, int(n)) if n else cap


def text_task(path: str | Path, name: str = "local_text", sample_by: str = "paragraph") -> dict:
    """An lm-eval task config (the dict form of a task YAML) scoring a local text file.

    Wikitext-style: ``loglikelihood_rolling`` over each document of the ``datasets`` "text"
    loader (``sample_by="paragraph"``: blank-line separated blocks), reporting lm-eval's
    ``word_perplexity``, ``byte_perplexity`` and ``bits_per_byte``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} not found")
    if not read_text(path).strip():
        raise ValueError(f"text file {path} is empty")
    return {
        "task": name,
        "dataset_path": "text",
        "dataset_kwargs": {"data_files": {"test": str(path.resolve())}, "sample_by": sample_by},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [
            {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
        ],
        "metadata": {"version": 1.0},
    }


def lm_eval_text(model, tokenizer, path: str | Path, limit: int | None = None, batch_size: int = 1,
                 max_length: int | None = None) -> dict:
    """Run lm-eval's ``simple_evaluate`` on the in-memory ``model`` over the text file ``path``.

    Args:
        model: a transformers causal LM (float or quantized in place).
        tokenizer: its tokenizer.
        limit: score only the first ``limit`` documents (paragraphs).
        max_length: rolling-window length (default: :func:`default_window`).
    Returns ``{"word_perplexity", "byte_perplexity", "bits_per_byte"}`` as floats. Packed layers on the
    CPU decode once for the whole run (:func:`decoded_once`).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task = text_task(path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              max_length=max_length or default_window(model))
    # include_defaults=False: skip indexing lm-eval's thousands of built-in task YAMLs (slow, unused).
    with decoded_once(model):
        out = simple_evaluate(model=lm, tasks=[task], limit=limit, log_samples=False, bootstrap_iters=0,
                              task_manager=TaskManager(include_defaults=False))
    metrics = out["results"][task["task"]]
    return {m: float(metrics[f"{m},none"]) for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")}

"""Standard perplexity: concatenate the text, tokenize once, non-overlapping windows, exp(mean NLL)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm


def tokenize_text(text: str, tokenizer) -> torch.Tensor:
    """The whole text as one 1-D LongTensor of token ids (tokenized once)."""
    if not text.strip():
        raise ValueError("evaluation text is empty")
    return torch.tensor(tokenizer(text, return_attention_mask=False)["input_ids"], dtype=torch.long)


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
    window is dropped. Returns ``{"ppl", "nll", "tokens", "windows", "window"}``.
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
    total_nll, total_tokens = 0.0, 0
    for i in tqdm(range(0, n_windows, batch_size), disable=not progress, desc="ppl"):
        batch = chunks[i : i + batch_size].to(device)
        logits = model(batch).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
    mean = total_nll / total_tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens, "windows": n_windows, "window": window}

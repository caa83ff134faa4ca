"""Calibration windows: random fixed-length token windows from a text, or text the model writes itself.

Sources:
    ``"builtin"``    the public-domain text shipped in ``calibration/data/shakespeare.txt`` (offline);
    ``"wikitext2"``  WikiText-2 raw *train* split through ``datasets`` (needs a reachable hub);
    a file path      any local UTF-8 text file (e.g. ../shared/data/wikitext-2/valid.txt);
    ``"self"``       data-free: sequences sampled from the float model itself, starting at BOS.
Windows are drawn with a fixed seed, so the same arguments always give the same tensor.
"""
from __future__ import annotations

from pathlib import Path
import torch

from .eval import read_text, tokenize_text

SOURCES = ("builtin", "wikitext2", "self", "<path to a text file>")
BUILTIN_TEXT = Path(__file__).resolve().parent / "data" / "shakespeare.txt"  # licence: data/README.md


def wikitext2_train_text() -> str:
    """WikiText-2 raw train split as one string (downloads through ``datasets``)."""
    from datasets import load_dataset

    try:
        ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
    except Exception as e:  # offline, no cache: say what to do instead
        raise RuntimeError(
            f"could not load WikiText-2 through `datasets` ({e.__class__.__name__}); pass a local text file "
            "instead, e.g. --calib ../shared/data/wikitext-2/valid.txt"
        ) from e
    return "\n\n".join(ds["text"])


def random_windows(ids: torch.Tensor, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens at random offsets of 1-D ``ids`` → LongTensor ``[n, seq]``."""
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if ids.numel() < seq_len + 1:
        raise ValueError(f"calibration text has {ids.numel()} tokens, too short for one window of {seq_len} "
                         f"tokens; use a longer text or a smaller --seq-len")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=g)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def self_generated(model, tokenizer, n_samples: int, seq_len: int, seed: int = 0, temperature: float = 1.0,
                   batch_size: int = 8) -> torch.Tensor:
    """Data-free calibration: ``n_samples`` sequences of ``seq_len`` tokens sampled from ``model``.

    Each sequence starts at the model's BOS token (else the tokenizer's; else EOS) and continues
    with temperature sampling; reaching EOS early does not stop it, so every row has ``seq_len``
    tokens. Returns LongTensor ``[n_samples, seq_len]``.
    """
    if model is None:
        raise ValueError("calibration source 'self' needs the float model to generate from")
    cfg = getattr(model, "config", None)
    ids = (getattr(cfg, "bos_token_id", None), getattr(tokenizer, "bos_token_id", None),
           getattr(cfg, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None))
    start = next((i for i in ids if isinstance(i, int)), None)
    if start is None:
        raise ValueError("calibration source 'self' needs a tokenizer with a BOS or EOS token to start from")
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # generate() samples from the global generator
    rows = []
    for i in range(0, n_samples, batch_size):
        b = min(batch_size, n_samples - i)
        prompt = torch.full((b, 1), start, dtype=torch.long, device=device)
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=seq_len - 1,
                             min_new_tokens=seq_len - 1, pad_token_id=start)
        rows.append(out[:, :seq_len].cpu())
    return torch.cat(rows)


def get_calibration_ids(source: str, tokenizer, n_samples: int, seq_len: int, seed: int = 0,
                        model=None) -> torch.LongTensor:
    """Calibration windows from ``source`` ("builtin", "wikitext2", "self" or a text file path).

    Returns LongTensor ``[n_samples, seq_len]`` (on CPU). Clear errors for a missing, empty or
    too-short text.
    """
    if n_samples < 1 or seq_len < 2:
        raise ValueError(f"need n_samples ≥ 1 and seq_len ≥ 2, got {n_samples}, {seq_len}")
    if source == "self":
        return self_generated(model, tokenizer, n_samples, seq_len, seed)
    if source == "builtin":
        text = read_text(BUILTIN_TEXT)
    elif source == "wikitext2":
        text = wikitext2_train_text()
    elif Path(source).is_file():
        text = read_text(source)
    else:
        raise FileNotFoundError(f"calibration source {source!r} is neither 'builtin', 'wikitext2', 'self' nor a text file")
    if not text.strip():
        raise ValueError(f"calibration text {source!r} is empty")
    return random_windows(tokenize_text(text, tokenizer), n_samples, seq_len, seed)

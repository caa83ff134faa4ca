"""Launch configs: a small per-GPU JSON table, looked up by (regime, code, M bucket, size).

``configs/default.json`` maps a GPU name (``torch.cuda.get_device_name()``, e.g. "NVIDIA H100
80GB HBM3") to ``{regime: {key: config}}``, with a ``"default"`` entry for any GPU and an
``"interpreter"`` entry used whenever ``TRITON_INTERPRET=1`` (one fixed config: autotuning needs
a driver). Keys are ``"<kind><bits>:m<M bucket>:<size>"`` (e.g. ``"pot4:m16:l"``) where any part
may be ``*``; the most specific match wins. ``POTKERNELS_CONFIGS=path.json`` points at another
table (``tune`` writes there). No autotuning happens unless asked (see ``tune.py``).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch

DEFAULT_TABLE = Path(__file__).with_name("configs") / "default.json"
REGIMES = ("dispatch", "gemv", "small_batch", "gemm", "dequant")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def table_path() -> Path:
    return Path(os.environ.get("POTKERNELS_CONFIGS", DEFAULT_TABLE))


@functools.lru_cache(maxsize=None)
def _table(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def reload() -> None:
    """Forget cached tables and lookups (after ``tune`` rewrote the JSON)."""
    _table.cache_clear()
    lookup.cache_clear()
    sm_count.cache_clear()


@functools.lru_cache(maxsize=None)
def device_name(device: torch.device | None = None) -> str:
    """Table entry for this process: "interpreter", the CUDA device name, or "default"."""
    if interpreting():
        return "interpreter"
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return "default"


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int | None = None) -> int:
    """Number of SMs (1 under the interpreter: it runs programs one by one anyway)."""
    if interpreting() or not torch.cuda.is_available():
        return 1
    return torch.cuda.get_device_properties(device_index or 0).multi_processor_count


M_BUCKETS = tuple(1 << i for i in range(13))  # 1, 2, 4, … 4096


def m_bucket(m: int) -> int:
    """Next power of two ≥ M, capped at the last of :data:`M_BUCKETS` (4096)."""
    return min(1 << max(m - 1, 0).bit_length(), M_BUCKETS[-1])


def size_class(n: int, k: int) -> str:
    """'s' (< 2 M weights, e.g. SmolLM2 layers), 'm' (< 32 M), 'l' (Llama-8B and up)."""
    nk = n * k
    return "s" if nk < 1 << 21 else ("m" if nk < 1 << 25 else "l")


def make_key(kind: str, bits: int, m: int, n: int, k: int) -> str:
    return f"{kind}{bits}:m{m_bucket(m)}:{size_class(n, k)}"


def _candidates(key: str) -> list[str]:
    kb, mb, sz = key.split(":")
    return [f"{a}:{b}:{c}" for a in (kb, "*") for b in (mb, "*") for c in (sz, "*")]


@functools.lru_cache(maxsize=4096)
def lookup(regime: str, kind: str, bits: int, m: int, n: int, k: int, device: str | None = None) -> dict[str, Any]:
    """Launch config for one call: the device's table, then "default", most specific key first."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}, expected one of {REGIMES}")
    table = _table(str(table_path()))
    dev = device or device_name()
    key = make_key(kind, bits, m, n, k)
    for name in (dev, "default"):
        entries = table.get(name, {}).get(regime, {})
        for cand in _candidates(key):
            if cand in entries:
                return dict(entries[cand])
    raise KeyError(f"no {regime} config for {key} on {dev!r} in {table_path()} (add a '*:*:*' entry)")


def store(regime: str, key: str, config: dict[str, Any], device: str | None = None,
          path: Path | None = None) -> Path:
    """Write one config into the JSON table (under the current GPU's name) and reload."""
    path = Path(path or table_path())
    table = json.loads(path.read_text()) if path.exists() else json.loads(DEFAULT_TABLE.read_text())
    dev = device or device_name()
    table.setdefault(dev, {}).setdefault(regime, {})[key] = config
    path.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    reload()
    return path

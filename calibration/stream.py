"""Block streaming and resume for the block-by-block calibrations (two-step, GPTQ).

Streaming (``offload``). The float model stays on the CPU — or, loaded with
:func:`potkernels.models.load_lazy`, is not materialised at all: its blocks sit on the meta
device. :meth:`BlockLoop.enter` reads block ℓ's float weights (memory-mapped safetensors) and
moves the block to the calibration device; once it is packed, :meth:`BlockLoop.leave` moves it
back to the CPU, its float weights gone with the replaced linears. The activations between blocks
live on the CPU in the activation dtype (each batch moves to the device for its forward). The
calibration device then holds about one float block + its Hessians + one batch of activations,
whatever the depth; the CPU holds the calibration activations, the parts outside the blocks and
the packed blocks.

Resume (``work_dir``). After each finished block the loop writes, each file under a temporary
name then renamed: the block's state dict (packed buffers + its float norms) and layer records,
the activations that feed the next block, and last ``progress.json`` (the next block, the reports
so far, a fingerprint of the settings, calibration data and model config). Activations are
*stored*, not recomputed: a resumed run continues from bit-identical inputs whatever the device.
Disk cost: the packed blocks (about the checkpoint's size without embeddings) plus one set of
activations, ``n_samples · seq_len · hidden`` values in the activation dtype (older sets are
deleted). A run with ``resume`` restores the finished blocks and continues; the result equals an
uninterrupted run's, bit for bit.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from potkernels.format import config_from_dict
from potkernels.integrations.hf import LayerReport, set_submodule
from potkernels.integrations.serialization import LAYER_CLASSES, quantized_layers

from .refine import _cast_tree, _qualified_name, _run

PROGRESS_FILE = "progress.json"


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    glibc raises its mmap threshold after large frees, so a freed float block's tensors stay in the
    heap and the next block's reads land beside them: the resident set would creep up block by block."""
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        trim = None
    if trim is not None:
        trim(0)


def fingerprint(model: nn.Module, calib_ids: torch.Tensor, settings: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one: settings, calibration data, model config."""
    config = getattr(model, "config", None)
    config_text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
    return {"settings": json.loads(json.dumps(settings, default=str)),
            "calib_sha256": hashlib.sha256(calib_ids.contiguous().numpy().tobytes()).hexdigest(),
            "calib_shape": list(calib_ids.shape),
            "model_config_sha256": hashlib.sha256(config_text.encode()).hexdigest()}


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary sibling and rename it into place (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


class ResumeState:
    """The finished blocks of one calibration in ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | Path, fp: dict[str, Any], resume: bool) -> None:
        """Check ``folder`` against ``fp`` before any work: with ``resume``, a saved run with other
        settings is refused; without, an old run there is cleared."""
        self.folder, self.fp = Path(folder), fp
        progress = self.folder / PROGRESS_FILE
        self.saved: Optional[dict[str, Any]] = None
        if resume and progress.is_file():
            saved = json.loads(progress.read_text())
            if saved.get("fingerprint") != fp:
                diff = sorted(k for k in set(fp) | set(saved.get("fingerprint", {}))
                              if fp.get(k) != saved.get("fingerprint", {}).get(k))
                raise ValueError(f"cannot resume from {self.folder}: it holds a calibration with other "
                                 f"{', '.join(diff)}; run without resume to start over")
            self.saved = saved
        elif self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.next_block_at_start = self.next_block

    @property
    def next_block(self) -> int:
        return 0 if self.saved is None else int(self.saved["next_block"])

    def _block_file(self, idx: int) -> Path:
        return self.folder / f"block-{idx:05d}.safetensors"

    def _inputs_file(self, idx: int) -> Path:
        return self.folder / f"inputs-{idx:05d}.safetensors"

    def save(self, idx: int, block: nn.Module, xs: list[torch.Tensor], reports: list[dict], layers: list[dict]) -> None:
        """Block ``idx`` is done: its tensors, the next block's inputs ``xs``, then the progress record."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in block.state_dict().items()}
        _replace(self._block_file(idx), lambda p: save_file(state, str(p)))
        acts = {f"x.{i}": x.detach().to("cpu").contiguous() for i, x in enumerate(xs)}
        _replace(self._inputs_file(idx + 1), lambda p: save_file(acts, str(p)))
        blocks = dict(self.saved["blocks"]) if self.saved else {}
        blocks[str(idx)] = quantized_layers(block)
        self.saved = {"fingerprint": self.fp, "next_block": idx + 1, "reports": reports, "layers": layers,
                      "blocks": blocks}
        text = json.dumps(self.saved)
        _replace(self.folder / PROGRESS_FILE, lambda p: p.write_text(text))
        self._inputs_file(idx).unlink(missing_ok=True)

    def restore_block(self, idx: int, block: nn.Module) -> None:
        """Put block ``idx`` back as it was saved: packed layers swapped in, every tensor loaded."""
        assert self.saved is not None
        for rec in self.saved["blocks"].get(str(idx), []):
            cfg = config_from_dict(rec["config"])
            layer = LAYER_CLASSES[rec["class"]](rec["in_features"], rec["out_features"], cfg, bias=rec["bias"],
                                                device="meta")
            set_submodule(block, rec["name"], layer)
        block.load_state_dict(load_file(str(self._block_file(idx))), strict=True, assign=True)

    def inputs(self) -> list[torch.Tensor]:
        """The saved inputs of block :attr:`next_block`."""
        acts = load_file(str(self._inputs_file(self.next_block)))
        return [acts[f"x.{i}"] for i in range(len(acts))]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class BlockLoop:
    """Where a block-by-block calibration runs and keeps things (see the module docstring).

    ``device``: the calibration device (default: where the model is). ``offload``: blocks move there
    one at a time and back to the CPU packed; activations stay on the CPU. ``state``: resume files.
    """

    model: nn.Module
    device: Optional[torch.device] = None
    offload: bool = False
    state: Optional[ResumeState] = None
    reports: list[Any] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = next(self.model.parameters()).device
        self.device = torch.device(self.device)

    @property
    def act_device(self) -> torch.device:
        return torch.device("cpu") if self.offload else self.device

    def start(self, blocks: nn.ModuleList, xs: list[torch.Tensor], extras: dict[int, tuple], act_dtype: torch.dtype,
              report_cls: type) -> tuple[int, list[torch.Tensor], dict[int, tuple]]:
        """``(first block to calibrate, its inputs, extras on the device)``; on resume the finished blocks are
        restored and their reports put in :attr:`reports` / :attr:`layers`."""
        start = 0 if self.state is None else self.state.next_block
        if start:
            for idx in range(start):
                self.state.restore_block(idx, blocks[idx])  # on the CPU
                self._materialize(blocks[idx])  # non-persistent buffers of a lazy model
                if not self.offload:
                    blocks[idx].to(self.device)
            xs = self.state.inputs()
            self.reports = [report_cls(**r) for r in self.state.saved["reports"]]
            self.layers = [LayerReport(**r) for r in self.state.saved["layers"]]
        xs = [x.to(self.act_device, act_dtype) for x in xs]
        return start, xs, _cast_tree(extras, self.device)

    def _materialize(self, block: nn.Module) -> None:
        lazy = getattr(self.model, "lazy_weights", None)
        if lazy is not None and lazy.pending(block):
            lazy.materialize(block, _qualified_name(self.model, block))

    def enter(self, block: nn.Module) -> nn.Module:
        """The block with its float weights read (lazy model) and on the calibration device."""
        self._materialize(block)
        return block.to(self.device)

    @torch.no_grad()
    def pass_through(self, idx: int, block: nn.Module, xs: list[torch.Tensor], extras: dict[int, tuple],
                     dtype: torch.dtype, act_dtype: torch.dtype) -> list[torch.Tensor]:
        """A block with nothing to quantize (all skipped): left in float, its outputs feed the next block."""
        return self.leave(idx, block, [_run(block, x, extras, dtype).to(act_dtype) for x in xs], None, [])

    def leave(self, idx: int, block: nn.Module, xs: list[torch.Tensor], report: Any,
              layers: list[LayerReport]) -> list[torch.Tensor]:
        """Block ``idx`` is packed: record its reports, move it back (offload), save progress; returns ``xs``
        (the next block's inputs) on the activation device."""
        if report is not None:
            self.reports.append(report)
        self.layers += layers
        xs = [x.to(self.act_device) for x in xs]
        if self.offload:
            block.to("cpu")
            release_freed_memory()
        if self.state is not None:
            self.state.save(idx, block, xs, [r.to_dict() for r in self.reports], [r.to_dict() for r in self.layers])
        return xs


__all__ = ["BlockLoop", "ResumeState", "fingerprint"]

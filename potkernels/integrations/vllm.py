"""vLLM quantization method ``potkernels``: serve PoT and int checkpoints, with tensor parallelism.

Registered in every vLLM process by the ``vllm.general_plugins`` entry point of this package
(``pyproject.toml``), so ``LLM(model=checkpoint_dir)`` and ``python -m vllm.entrypoints.openai.api_server
--model checkpoint_dir`` pick it from config.json's ``quantization_config.quant_method`` with no flag.

* Weights are vLLM parameter classes, so vLLM's own loaders shard them: ``qweight [rows, N]``,
  ``scales`` / ``zeros [n_groups, N]`` slice along N for column-parallel layers and for each shard of a
  merged ``qkv_proj`` / ``gate_up_proj``. Row-parallel layers split K: when every rank's K range is a
  whole number of 32-code units the loader narrows ``qweight`` rows itself, otherwise each rank reads
  all rows; the (small) scales are read whole and each rank keeps the groups it touches
  (:mod:`.sharding`, bit-exact for every K per rank).
* ``process_weights_after_loading`` prepares each layer once: the rank's piece, upgraded by the
  checkpoint layer's :func:`~.checkpoint.layer_weight` (the one place format versions are handled).
  On CUDA ``apply`` runs the registered ``potkernels::pot_matmul`` / ``int_matmul`` custom ops
  (Triton kernels; declared with fake implementations, so ``torch.compile`` and CUDA graphs trace
  them). On CPU the weight is decoded once at load into the activation dtype and ``apply`` is a
  plain ``F.linear``: the same numbers as ``cache_decoded_weights`` in transformers, at the float
  model's memory for these layers (fp32: 4 bytes per weight, bf16: 2) instead of ``b/8``.

Refused at load, naming the layer: a merged layer whose shards are not all quantized with one code,
layers missing from ``quantization_config.json``, an unreadable format version, or a checksum mismatch.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.linear import (LinearBase, LinearMethodBase, UnquantizedLinearMethod,
                                               register_weight_loader_v2_supported_method)
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.parameter import BasevLLMParameter, GroupQuantScaleParameter, ModelWeightParameter, RowvLLMParameter

from .. import ops
from ..format import IntWeight, PoTWeight, config_from_dict
from ..format.layout import WORD_BITS
from .checkpoint import (IN_PLACE_VERSIONS, QUANT_FILE, QUANT_METHOD, CheckpointError, check_format_version,
                         layer_weight, read_checkpoint_meta)
from .sharding import KSlice, slice_k

log = logging.getLogger("potkernels")


def _checkpoint_folder(model: str, revision: Optional[str]) -> Path:
    """The local folder of ``model`` (a path, or a hub id already fetched by vLLM)."""
    folder = Path(model)
    if folder.is_dir():
        return folder
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(model, QUANT_FILE, revision=revision)).parent


class PoTVllmConfig(QuantizationConfig):
    """config.json's ``quantization_config`` (quant method ``potkernels``) plus, read in
    :meth:`maybe_update_config`, the per-layer records of ``quantization_config.json``."""

    def __init__(self, kind: str, bits: int, group_size: Optional[int], format_version: int,
                 modules_to_not_convert: Optional[list[str]] = None) -> None:
        super().__init__()
        self.format_version = check_format_version(format_version, "config.json quantization_config",
                                                   IN_PLACE_VERSIONS, reader="the potkernels vLLM method")
        self.code = config_from_dict({"kind": kind, "bits": bits, "group_size": group_size})
        self.skip = list(modules_to_not_convert or [])
        self.layers: Optional[dict[str, dict[str, Any]]] = None  # name → record; set by maybe_update_config

    def __repr__(self) -> str:
        return f"PoTVllmConfig({self.code}, format_version={self.format_version})"

    @classmethod
    def get_name(cls) -> str:
        return QUANT_METHOD

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 70  # Triton kernels; CPU has no capability check

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # the method is selected by config.json's quantization_config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PoTVllmConfig":
        try:
            return cls(config["kind"], config["bits"], config["group_size"], config.get("format_version"),
                       config.get("modules_to_not_convert"))
        except KeyError as e:
            raise CheckpointError(f"config.json quantization_config lacks {e}") from e

    def maybe_update_config(self, model_name: str, hf_config: Any = None, revision: Optional[str] = None) -> None:
        """Read ``quantization_config.json`` (format name and version, sha256 of the weights, layer list)."""
        folder = _checkpoint_folder(model_name, revision)
        meta = read_checkpoint_meta(folder, verify=True)
        check_format_version(meta["format_version"], str(folder), IN_PLACE_VERSIONS,
                             reader="the potkernels vLLM method")
        self.format_version = meta["format_version"]
        self.layers = {rec["name"]: rec for rec in meta["layers"]}

    def _records(self, prefix: str) -> list[Optional[dict[str, Any]]]:
        """Checkpoint records of the layers a vLLM layer holds (one, or the shards of a merged layer)."""
        if self.layers is None:
            raise CheckpointError("the potkernels vLLM method needs quantization_config.json (maybe_update_config "
                                  "was not called)")
        parent, _, leaf = prefix.rpartition(".")
        names = [f"{parent}.{s}" if parent else s for s in self.packed_modules_mapping.get(leaf, [leaf])]
        return [self.layers.get(n) for n in names]

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Optional[LinearMethodBase]:
        if not isinstance(layer, LinearBase):
            return None  # embeddings, lm_head: float
        recs = self._records(prefix)
        if all(r is None for r in recs):
            return UnquantizedLinearMethod()  # left in float at quantization (skip list)
        if any(r is None for r in recs):
            raise CheckpointError(f"layer {prefix}: vLLM merges {len(recs)} checkpoint layers here, and only some of "
                                  "them are quantized; quantize all or none of them")
        codes = {(r["class"], tuple(sorted(r["config"].items()))) for r in recs}
        if len(codes) != 1:
            raise CheckpointError(f"layer {prefix}: the merged checkpoint layers use different codes {sorted(codes)}; "
                                  "vLLM needs one code per merged layer")
        return PoTLinearMethod(self, recs[0], prefix)


def _zeros_for(layer: torch.nn.Module) -> Optional[torch.Tensor]:
    return getattr(layer, "zeros", None)


@register_weight_loader_v2_supported_method
class PoTLinearMethod(LinearMethodBase):
    """One packed vLLM linear layer (column-, row-parallel, merged or replicated)."""

    def __init__(self, quant_config: PoTVllmConfig, rec: dict[str, Any], prefix: str) -> None:
        self.quant_config, self.prefix = quant_config, prefix
        self.code = config_from_dict(rec["config"])
        self.weight_cls = PoTWeight if self.code.kind == "pot" else IntWeight

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype, **extra_weight_attrs: Any) -> None:
        loader = extra_weight_attrs["weight_loader"]
        n_local = sum(output_partition_sizes)
        k_full, k_local = input_size, input_size_per_partition
        row_parallel = k_local != k_full
        tp_rank, tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        # Row-parallel: each rank's K range; the loader narrows qweight rows only on whole 32-code units.
        k0 = tp_rank * k_local if row_parallel else 0
        rows_sharded = row_parallel and k_local % WORD_BITS == 0
        specs = self.weight_cls.expected_for(self.code, k_local if rows_sharded else k_full, n_local)
        for name, (dtype, (rows, n)) in specs.items():
            if name != "qweight":  # scales / zeros of every group: small, each rank keeps its own groups
                rows = self.code.groups_in(k_full)[1]
            data = torch.empty(rows, n, dtype=dtype)
            if not row_parallel:  # column-parallel / merged / replicated: vLLM slices N
                param = GroupQuantScaleParameter(data=data, output_dim=1, input_dim=0, weight_loader=loader) \
                    if name != "qweight" else ModelWeightParameter(data=data, output_dim=1, input_dim=0,
                                                                   weight_loader=loader)
            elif name == "qweight" and rows_sharded:
                param = RowvLLMParameter(data=data, input_dim=0, weight_loader=loader)
            else:  # read whole on every rank
                param = BasevLLMParameter(data=data, weight_loader=loader)
            layer.register_parameter(name, param)
        layer.potkernels_shard = (k_full, k0, k0 + k_local, k0 if rows_sharded else 0)
        log.debug("%s: %s, K %d (rank %d/%d: [%d, %d)), N %d", self.prefix, self.code, k_full, tp_rank, tp_size,
                  k0, k0 + k_local, n_local)

    def _local_piece(self, layer: torch.nn.Module) -> KSlice:
        """The rank's piece of the layer, as loaded, upgraded to the current format version."""
        k_full, k0, k1, q_start = layer.potkernels_shard
        piece = slice_k(self.code, k_full, k0, k1, layer.qweight.data, layer.scales.data,
                        None if _zeros_for(layer) is None else layer.zeros.data, qweight_start=q_start)
        w = piece.weight
        rec = {"name": self.prefix, "class": "PoTLinear" if self.code.kind == "pot" else "IntLinear",
               "in_features": w.in_features, "out_features": w.out_features, "config": w.config.to_dict()}
        try:
            return KSlice(layer_weight(rec, w.tensors(), self.quant_config.format_version), piece.lead)
        except CheckpointError as e:
            raise CheckpointError(f"{e} (rank piece K [{k0}, {k1}) of {k_full})") from e

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        piece = self._local_piece(layer)
        for name in piece.weight.tensors():
            delattr(layer, name)
        layer.potkernels_lead = piece.lead
        if piece.weight.qweight.device.type == "cuda":
            layer.potkernels_weight = piece.weight
            for name, t in piece.weight.tensors().items():
                layer.register_parameter(name, torch.nn.Parameter(t, requires_grad=False))
            layer.potkernels_decoded = None
        else:  # CPU: decode once (activation dtype = the layer's params dtype)
            dtype = layer.params_dtype if hasattr(layer, "params_dtype") else torch.float32
            w = piece.dequantize(ops._weight_dtype(dtype)).to(dtype)
            layer.potkernels_decoded = torch.nn.Parameter(w.contiguous(), requires_grad=False)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = layer.potkernels_decoded
        if w is not None:
            return F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
        if layer.potkernels_lead:  # the rank's words start before its first column: zero activations there
            x = F.pad(x, (layer.potkernels_lead, 0))
        pw = layer.potkernels_weight
        if isinstance(pw, PoTWeight):
            return torch.ops.potkernels.pot_matmul(x, layer.qweight, layer.scales, bias, pw.config.bits,
                                                   pw.group_size, pw.in_features)
        return torch.ops.potkernels.int_matmul(x, layer.qweight, layer.scales, layer.zeros, bias, pw.config.bits,
                                               pw.group_size, pw.in_features)


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the method (runs in every process; a second call
    re-registers the same class)."""
    register_quantization_config(QUANT_METHOD)(PoTVllmConfig)


__all__ = ["PoTLinearMethod", "PoTVllmConfig", "register"]

"""transformers integration: ``quant_method="potkernels"`` for ``from_pretrained`` / ``save_pretrained``.

Importing :mod:`potkernels` registers :class:`PoTQuantizationConfig` and :class:`PoTHfQuantizer` with
transformers' quantizer registry, so that

* ``AutoModelForCausalLM.from_pretrained(checkpoint_dir)`` of a folder written by
  :func:`potkernels.save_quantized` (or ``model.save_pretrained``) builds the packed layers on the
  meta device and loads the packed buffers directly (``device_map``, ``dtype``/``torch_dtype``,
  ``low_cpu_mem_usage`` as for any model), after the same checks as :func:`potkernels.load_quantized`
  (format version, sha256, every tensor name, shape and dtype) — the logits are identical;
* ``from_pretrained(float_model, quantization_config=PoTQuantizationConfig(bits=3, group_size=128))``
  loads the float weights and quantizes them (round to nearest) before returning.

Without potkernels imported, plain transformers must not load such a folder with random weights:
``config.json`` carries a ``transformers_weights`` entry that transformers itself rejects with a
``ValueError`` quoting it ("…needs `import potkernels`…"); the quantizer replaces it by the real
weights file before transformers resolves the checkpoint files.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                          register_quantization_config, register_quantizer)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..format import FORMAT_VERSION, IntConfig, PoTConfig, config_from_dict
from ..nn import _PackedLinear
from .checkpoint import (IN_PLACE_VERSIONS, LEGACY_WEIGHTS_GUARDS, QUANT_FILE, QUANT_METHOD, WEIGHTS_FILE,
                         WEIGHTS_GUARD, CheckpointError,
                         check_format_version, layer_weight, quantization_config_dict, read_checkpoint_meta)
from .hf import LayerReport, dequantize_model, quantize_model
from .serialization import _swap_layers, bind_save_pretrained, check_checkpoint_tensors, restore_buffer_dtypes

log = logging.getLogger("potkernels")


class PoTQuantizationConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a potkernels model (``config.json``) or a request to quantize.

    Args:
        bits: code width (PoT 2/3/4; int 2/3/4/8).
        group_size: 32, 64, 128, 256 or ``None`` (one group per output channel).
        kind: ``"pot"`` (power of two) or ``"int"`` (the uniform baseline).
        modules_to_not_convert: layers left in float (names, last name parts or globs; default
            ``["lm_head"]``).
        format_version: the checkpoint format version (set when saving; informational when quantizing).
    """

    def __init__(self, bits: int = 4, group_size: Optional[int] = 128, kind: str = "pot",
                 modules_to_not_convert: Optional[list[str]] = None, format_version: Optional[int] = None,
                 **kwargs: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.kind, self.bits, self.group_size = kind, bits, group_size
        self.modules_to_not_convert = list(modules_to_not_convert) if modules_to_not_convert is not None else ["lm_head"]
        self.format_version = FORMAT_VERSION if format_version is None else format_version
        self.post_init()

    def post_init(self) -> None:
        self.quant_config()  # raises ValueError for a bad kind / bits / group size

    def quant_config(self) -> PoTConfig | IntConfig:
        """The package's own config for the code described here."""
        return config_from_dict({"kind": self.kind, "bits": self.bits, "group_size": self.group_size})

    @classmethod
    def from_quant_config(cls, cfg: PoTConfig | IntConfig, skip: Optional[list[str]] = None,
                          format_version: Optional[int] = None) -> "PoTQuantizationConfig":
        return cls(bits=cfg.bits, group_size=cfg.group_size, kind=cfg.kind, modules_to_not_convert=skip,
                   format_version=format_version)

    def to_dict(self) -> dict[str, Any]:
        return quantization_config_dict(self.kind, self.bits, self.group_size, self.format_version,
                                        self.modules_to_not_convert)


class PoTHfQuantizer(HfQuantizer):
    """Loads potkernels checkpoints into packed layers, or quantizes a float model after loading it."""

    requires_calibration = False

    def __init__(self, quantization_config: PoTQuantizationConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self._meta: Optional[dict[str, Any]] = None

    def validate_environment(self, device_map: Any = None, **kwargs: Any) -> None:
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("potkernels models cannot be offloaded to disk (device_map has 'disk')")

    def update_attn_implementation(self, config):
        # Runs before transformers resolves the checkpoint files: swap the guard for the real file.
        if getattr(config, "transformers_weights", None) in (WEIGHTS_GUARD, *LEGACY_WEIGHTS_GUARDS):
            config.transformers_weights = WEIGHTS_FILE
        return config

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs: Any):
        if not self.pre_quantized:
            return model  # quantize on load: the float weights load first, see below
        files = [Path(f) for f in checkpoint_files or []]
        if len(files) != 1:
            raise CheckpointError(f"a potkernels checkpoint has one weights file, transformers found {files}")
        folder = files[0].parent
        _fetch_quant_file(folder, getattr(model.config, "name_or_path", None))
        meta = read_checkpoint_meta(folder, verify=True)
        # transformers loads buffers as stored: only versions with the current tensor names (older ones
        # are repacked by load_quantized; convert once with load_quantized(dir).save_pretrained(new_dir)).
        check_format_version(meta.get("format_version"), str(folder), IN_PLACE_VERSIONS,
                             reader="from_pretrained (convert older ones with potkernels.load_quantized(dir)"
                                    ".save_pretrained(new_dir))")
        want = self.quantization_config.quant_config()
        have = config_from_dict(meta)
        if want != have:
            raise CheckpointError(f"{folder}: config.json says {want}, quantization_config.json says {have}")
        _swap_layers(model, meta["layers"])  # empty packed layers on the meta device
        check_checkpoint_tensors(folder, model, meta)  # every name, shape and dtype before any load
        self._meta = meta
        _guard_init_weights(model)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs: Any):
        if self.pre_quantized:
            _unguard_init_weights(model)
            meta = self._meta or {}
            _upgrade_in_place(model, meta)
            restore_buffer_dtypes(model, meta.get("buffer_dtypes", {}))
            model.quantization_config = self.quantization_config.quant_config()
            model.quantization_report = [LayerReport(**r) for r in meta.get("report", [])]
            model.quantization_skip = list(meta.get("skip", []))
        else:
            quantize_model(model, self.quantization_config.quant_config(),
                           skip=tuple(self.quantization_config.modules_to_not_convert))
        bind_save_pretrained(model)
        return model

    def _dequantize(self, model, dtype=None):
        return dequantize_model(model, dtype)

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def _upgrade_in_place(model, meta: dict[str, Any]) -> None:
    """Each loaded packed layer through :func:`.checkpoint.layer_weight` (the checks and format upgrades
    every reader shares); a layer whose tensors come back unchanged is left as it is."""
    version = meta.get("format_version", FORMAT_VERSION)
    for rec in meta.get("layers", []):
        m = model.get_submodule(rec["name"])
        stored = {n: getattr(m, n) for n in m.tensor_names}
        w = layer_weight(rec, stored, version)
        if any(t is not stored[n] for n, t in w.tensors().items()):
            m.load_packed(w)


def _fetch_quant_file(folder: Path, name_or_path: Optional[str]) -> None:
    """A hub checkpoint: transformers fetched config.json and the weights; fetch quantization_config.json
    into the same snapshot folder (a local folder must already hold it)."""
    if (folder / QUANT_FILE).is_file() or not name_or_path or Path(name_or_path).exists():
        return
    from transformers.utils import cached_file

    try:
        cached_file(name_or_path, QUANT_FILE, _raise_exceptions_for_missing_entries=False)
    except OSError as e:  # reported below as a missing file
        log.warning("could not fetch %s for %s: %s", QUANT_FILE, name_or_path, e)


def _guard_init_weights(model) -> None:
    """Keep transformers' ``_init_weights`` off the packed layers while it initialises what the checkpoint
    does not hold (non-persistent buffers): some models' init reads ``module.c_proj.weight`` directly
    (GPT-2), which a packed layer does not have. Every packed tensor was checked to be in the file."""
    from transformers import PreTrainedModel

    for sub in [m for m in model.modules() if isinstance(m, PreTrainedModel)]:
        original = sub._init_weights

        def init_weights(module, _original=original):
            if isinstance(module, _PackedLinear):
                return
            try:
                _original(module)
            except AttributeError:
                if not any(isinstance(c, _PackedLinear) for c in module.children()):
                    raise

        sub._init_weights = init_weights


def _unguard_init_weights(model) -> None:
    from transformers import PreTrainedModel

    for sub in model.modules():
        if isinstance(sub, PreTrainedModel) and "_init_weights" in sub.__dict__:
            del sub._init_weights


def register() -> None:
    """Register the config and quantizer with transformers (idempotent; runs on ``import potkernels``)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(PoTQuantizationConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(PoTHfQuantizer)


register()

__all__ = ["PoTHfQuantizer", "PoTQuantizationConfig", "QUANT_METHOD", "WEIGHTS_GUARD", "register"]

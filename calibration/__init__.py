"""Calibration for potkernels: PoTPTQ two-step PTQ, QAT, calibration data and evaluation.

    from calibration import calibrate_model, get_calibration_ids
    ids = get_calibration_ids("../shared/data/wikitext-2/valid.txt", tok, n_samples=32, seq_len=512)
    calibrate_model(model, PoTConfig(bits=3, group_size=128), ids, method="two-step")
"""
# First of the heavy imports: under `python -m calibration` a Ctrl-C during them exits 130 (potkernels/_startup.py).
import potkernels  # noqa: F401
from .calibrate import METHODS, calibrate_model
from .data import get_calibration_ids
from .eval import lm_eval_text, perplexity, read_text, tokenize_text
from .init import init_scales

__all__ = ["METHODS", "calibrate_model", "get_calibration_ids", "init_scales", "lm_eval_text", "perplexity",
           "read_text", "tokenize_text"]

"""Calibration for potkernels: PoTPTQ two-step PTQ, QAT, calibration data and evaluation.

    from calibration import calibrate_model, get_calibration_ids
    ids = get_calibration_ids("../shared/data/wikitext-2/valid.txt", tok, n_samples=32, seq_len=512)
    calibrate_model(model, PoTConfig(bits=3, group_size=128), ids, method="two-step")
"""
from .threads import request_reproducible_mkl

request_reproducible_mkl()  # before any matmul: results independent of the thread count (threads.py)

from .calibrate import METHODS, calibrate_model
from .data import get_calibration_ids
from .eval import lm_eval_text, perplexity, read_text, tokenize_text
from .init import init_scales

__all__ = ["METHODS", "calibrate_model", "get_calibration_ids", "init_scales", "lm_eval_text", "perplexity",
           "read_text", "tokenize_text"]

"""Calibration for potkernels: PoTPTQ two-step PTQ, QAT, calibration data and evaluation."""

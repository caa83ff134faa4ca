"""``python -m calibration`` → :func:`calibration.cli.main` (exit status: see its module docstring)."""
from potkernels._startup import run_cli

from .threads import request_reproducible_mkl

request_reproducible_mkl()  # before any matmul: results independent of the thread count (threads.py)


def _load_main():
    from .cli import main

    return main


run_cli(_load_main)

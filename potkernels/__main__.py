"""``python -m potkernels`` → :func:`potkernels.cli.main` (exit status: see its module docstring)."""
from potkernels._startup import run_cli


def _load_main():
    from .cli import main

    return main


run_cli(_load_main)

"""``python -m potkernels`` → :func:`potkernels.cli.main` (exit status: see its module docstring)."""
import sys

from potkernels._startup import INTERRUPTED, ctrl_c_raises

try:
    ctrl_c_raises()
    from .cli import main

    code = main()
except KeyboardInterrupt:  # between the imports and main's own handler
    print(INTERRUPTED, file=sys.stderr)
    code = 130
sys.exit(code)

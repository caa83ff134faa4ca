"""``python -m potkernels demo`` (see potkernels/cli.py)."""
import sys

from .cli import main

sys.exit(main())

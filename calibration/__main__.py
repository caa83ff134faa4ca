"""``python -m calibration`` → :func:`calibration.cli.main`."""
import sys

from .cli import main

sys.exit(main())

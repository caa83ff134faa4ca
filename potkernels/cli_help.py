"""What every command line of the project shares (package CLIs and bench/): the help formatter, the
argument parser, the user-facing error and the exit status convention.

Exit status: 0 done; 2 bad input or usage (one ``error: …`` line, checked before any model loads);
1 a failure while working (e.g. a reloaded checkpoint that does not reproduce the model); 130 Ctrl-C
(one line; no checkpoint is ever left half-written).
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(Exception):
    """A bad input: printed as one ``error: …`` line, exit status :data:`EXIT_USAGE`, no traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` that leaves out ``(default: None)`` and defaults the help states."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is None:
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (not the whole usage) and exit :data:`EXIT_USAGE`."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USAGE)

"""Ctrl-C while ``python -m potkernels`` / ``python -m calibration`` is still importing torch & co.

Python turns a Ctrl-C there into a traceback, and (since 3.8) a KeyboardInterrupt that reaches the top
level makes the process kill itself by SIGINT instead of exiting 130. Under ``-m`` (``sys.argv[0] ==
"-m"`` while the module is being located, i.e. during these package imports) :func:`quiet_ctrl_c_at_startup`
installs a handler that prints one line and exits 130 at once: nothing has been written yet. The command
line's ``main`` hands Ctrl-C back to Python (:func:`ctrl_c_raises`), and ends a KeyboardInterrupt itself.
This module imports nothing heavy.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, NoReturn

INTERRUPTED = "interrupted: nothing was written"


def _exit_130(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    try:
        sys.stderr.write(INTERRUPTED + "\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def quiet_ctrl_c_at_startup() -> None:
    """Under ``python -m``, make a Ctrl-C during the package imports one line and exit status 130."""
    if (sys.argv[:1] == ["-m"] and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, _exit_130)


def ctrl_c_raises() -> None:
    """From now on Ctrl-C raises KeyboardInterrupt again (the command line cleans up and exits 130)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _exit_130:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_cli(load_main: Callable[[], Callable[[], int]]) -> NoReturn:
    """The body of a ``__main__``: ``sys.exit(load_main()())``, where ``load_main`` does the heavy imports and
    returns the command line's ``main``; a Ctrl-C between those imports and main's own handler is one line
    and exit status 130."""
    try:
        ctrl_c_raises()
        code = load_main()()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        code = 130
    sys.exit(code)

"""Silence LiteRT's native INFO lines ("Created TensorFlow Lite XNNPACK delegate for CPU.").

LiteRT's C++ runtime prints that line to file descriptor 2 the first time a signature
runs, once per interpreter, and its Python API has no switch for its log level: in a
fleet of worker processes and in the demo it breaks the progress bar again and again.
:func:`quiet_native_stderr` points fd 2 at ``/dev/null`` around such a call. Python's own
``sys.stderr`` writes go to the same descriptor, so the window is kept to the one call;
overlapping windows (two interpreters in two threads) share one redirection, restored
when the last one closes. Errors still surface: a failing call raises in Python.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_saved: int | None = None


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send what native code writes to fd 2 to /dev/null for the ``with`` block."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            try:
                sys.stderr.flush()
                _saved = os.dup(2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
            except OSError:  # no fd 2 to redirect (an embedded interpreter): just run
                _saved = None
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                os.dup2(_saved, 2)
                os.close(_saved)
                _saved = None

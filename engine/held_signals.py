"""Stop signals held back while native code that calls into Python runs, and delivered once it returns.

A Python signal handler runs in the main thread between two bytecodes, wherever those are.  When they are in a
Python function that C++ code called, the exception the handler raises (KeyboardInterrupt, or the live tool's
StopRequested) has to cross the C++ frames on its way out, and does not arrive as itself.  OpenVINO's model
conversion calls the PyTorch decoder's Python methods for every node: a Ctrl-C there came back as an
``OpConversionFailure`` (read as a failed build: an explicit backend exited 1 with a 40-line message, ``auto``
fell back to the next backend and the Ctrl-C was lost), or the process aborted without a word (SIGABRT, exit 134).
Inside :func:`held_stop_signals` such a signal is only noted; when the block ends (seconds later at most) it is
raised again, to the handler that was in place.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def held_stop_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP inside the block; the first one that arrived is raised again at its end.

    Outside the main thread this does nothing: Python runs signal handlers in the main thread only, so code in
    another thread is never interrupted by one.  A handler set outside Python (``signal.getsignal`` gives None)
    is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for number in STOP_SIGNALS:
        if signal.getsignal(number) is not None:
            previous[number] = signal.signal(number, lambda number, _frame: held.append(number))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held:
            signal.raise_signal(held[0])

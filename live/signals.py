"""Ending a run on Ctrl-C, ``kill`` or a closing terminal the same way: outputs finalised, nothing lost.

Python turns SIGINT into KeyboardInterrupt and lets SIGTERM and SIGHUP kill
the process on the spot, which leaves an unfinished video file behind.
:func:`on_stop_signals` routes all three to one handler for the time it is
active, so that whoever is running decides what a stop means: during
start-up, :func:`raise_stop` aborts what is being loaded; while the pipeline
runs, it asks the threads to stop and finalises the outputs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

from engine.held_signals import STOP_SIGNALS, swap_handlers


class StopRequested(BaseException):
    """Raised by :func:`raise_stop` (a BaseException, like KeyboardInterrupt: no ``except Exception`` swallows it)."""

    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def raise_stop(signal_number: int) -> None:
    raise StopRequested(signal_number)


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Call ``handler(signal_number)`` on SIGINT, SIGTERM and SIGHUP while inside; restore the previous handlers after.

    Signal handlers can only be set from the main thread: elsewhere (a test
    running the pipeline in a thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = swap_handlers({number: lambda number, _frame: handler(number) for number in STOP_SIGNALS})
    try:
        yield
    finally:
        swap_handlers(previous)

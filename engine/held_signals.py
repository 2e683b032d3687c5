"""Stop signals held back while a model export or conversion runs, and delivered once it returns.

A Python signal handler runs in the main thread between two bytecodes, wherever those are.  Inside a model export
the exception it raises (KeyboardInterrupt, or the live tool's StopRequested) does not always arrive as itself:
``torch.export`` swallowed a SIGINT in 2 of 12 timed tries and ``torch.onnx.export`` in 1 of 12, and OpenVINO's
model conversion, which calls the PyTorch decoder's Python methods from C++ for every node, turned one into an
``OpConversionFailure`` (read as a failed build: an explicit backend exited 1 with a 40-line message, ``auto`` fell
back to the next backend and the Ctrl-C was lost) or aborted the process without a word (SIGABRT, exit 134).
Inside :func:`held_stop_signals` a first such signal is only noted and raised again, to the handler that was in
place, when the block ends (seconds later); a second one is delivered at once, for an export that never ends.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _blocked(numbers: tuple[int, ...]) -> Iterator[None]:
    """Keep ``numbers`` pending while handlers are swapped (one arriving midway would find half of them swapped);
    they are delivered when unblocked.  Where there is no signal mask (Windows), nothing is blocked."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, numbers)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def swap_handlers(handlers: dict[int, object]) -> dict[int, object]:
    """Install ``handlers`` (signal number -> handler) with those signals blocked meanwhile (one arriving midway
    would find half of them swapped; it is delivered, to its new handler, once all are in); returns the handlers
    they replace, in the same form, to swap back with."""
    with _blocked(tuple(handlers)):
        return {number: signal.signal(number, handler) for number, handler in handlers.items()}


@contextlib.contextmanager
def held_stop_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP inside the block and raise each one held again, in order, at its end.

    A second stop signal inside the block puts the handlers back and is handled at once.  Signals the process
    ignores (``nohup``'s SIGHUP) and handlers set outside Python (``signal.getsignal`` gives None) are left alone.
    Outside the main thread this does nothing: Python runs signal handlers in the main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous: dict[int, object] = {}

    def restore() -> None:
        swap_handlers(previous)
        previous.clear()  # once only: by a second signal, or at the end

    def hold(number: int, _frame) -> None:
        if held:  # asked twice: stop now
            restore()
            signal.raise_signal(number)
            return
        held.append(number)
        log.warning("%s received: stopping once the model export under way ends (seconds); send it again to stop now",
                    signal.Signals(number).name)

    previous.update(swap_handlers({number: hold for number in STOP_SIGNALS
                                   if signal.getsignal(number) not in (None, signal.SIG_IGN)}))
    try:
        yield
    finally:
        restore()
        for number in dict.fromkeys(held):
            signal.raise_signal(number)

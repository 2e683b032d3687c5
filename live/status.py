"""A thread-safe board of what is going on, shared by the pipeline's threads.

Conditions (``set``/``clear``, e.g. "camera lost") stay until cleared and are
shown on screen; events (``event``, e.g. "calibrated") are said once.  Every
change is written to the terminal (stderr by default) as it happens, and to
the log file through the ``live.status`` logger.  :meth:`StatusBoard.failure`
reports an exception: one line for the user, naming the log file, where its
traceback goes.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

log = logging.getLogger("live.status")


class StatusBoard:
    """log: where the lines are printed (stderr); log_file: where tracebacks are kept, named in failure messages."""

    def __init__(self, log: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 log_file: Path | None = None):
        self._lock = threading.Lock()
        self._conditions: dict[str, str] = {}
        self._log = log or sys.stderr
        self._clock = clock
        self._start = clock()
        self.log_file = log_file

    def set(self, key: str, message: str) -> None:
        """Raise or update a standing condition."""
        with self._lock:
            changed = self._conditions.get(key) != message
            self._conditions[key] = message
        if changed:
            self._write(message)

    def clear(self, key: str, message: str | None = None) -> None:
        """End a condition, logging ``message`` if it was standing."""
        with self._lock:
            was = self._conditions.pop(key, None)
        if was is not None and message:
            self._write(message)

    def event(self, message: str) -> None:
        self._write(message)

    def failure(self, key: str, message: str, error: BaseException, standing: bool = True) -> None:
        """Report ``error``: "<message>: <error>" on screen (as condition ``key`` if standing, else once), with its
        traceback in the log file."""
        log.debug("%s", message, exc_info=error)
        where = f" (traceback in {self.log_file})" if self.log_file else ""
        line = f"{message}: {type(error).__name__}: {error}{where}"
        if standing:
            self.set(key, line)
        else:
            self.event(line)

    def has(self, key: str) -> bool:
        with self._lock:
            return key in self._conditions

    def conditions(self) -> list[str]:
        with self._lock:
            return list(self._conditions.values())

    def _write(self, message: str) -> None:
        log.info("%s", message)
        print(f"[{self._clock() - self._start:7.2f}s] {message}", file=self._log, flush=True)

"""A thread-safe board of what is going on, shared by the pipeline's threads.

Conditions (``set``/``clear``, e.g. "camera lost") stay until cleared and are
shown on screen; events (``event``, e.g. "calibrated") are logged once.
Every change is written to the log (stderr by default) as it happens.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO


class StatusBoard:
    def __init__(self, log: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._conditions: dict[str, str] = {}
        self._log = log or sys.stderr
        self._clock = clock
        self._start = clock()

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

    def has(self, key: str) -> bool:
        with self._lock:
            return key in self._conditions

    def conditions(self) -> list[str]:
        with self._lock:
            return list(self._conditions.values())

    def _write(self, message: str) -> None:
        print(f"[{self._clock() - self._start:7.2f}s] {message}", file=self._log, flush=True)

"""How a run ended, what it delivered, and the exit status that says so.

Every way a run can end goes through one :class:`RunReport`: the pipeline
fills it, :meth:`RunReport.summary` tells the user in one line, and
:meth:`RunReport.exit_code` turns it into the process's exit status.  The
rules live here, once:

- a signal (Ctrl-C, ``kill``, a closing terminal) exits 128 + its number,
  after the outputs were finalised;
- an output that failed, or a camera or video file that could not be read,
  exits 1;
- the quit key exits 0: the user chose to end the run there;
- otherwise an offline render (a video file rendered to a file) exits 0
  only when every frame it promised was written: each frame of the driving
  video, or ``--max-frames`` of them; a live run exits 0 when it delivered at
  least one frame.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import Enum


class StopReason(Enum):
    END_OF_STREAM = "the driving video ended"
    MAX_FRAMES = "--max-frames reached"
    QUIT = "quit by the user"
    SIGNAL = "stopped by a signal"
    OUTPUT_FAILED = "an output failed"
    CAMERA_FAILED = "the camera or video file failed"


@dataclass
class RunReport:
    """What one run delivered.

    written: frames sent to the outputs; promised: what an offline render set
    out to write (None for a live run); unreadable: frames of the driving video
    that could not be decoded and were skipped; failed: frames whose inference
    raised; dropped: stale frames replaced by newer ones (live runs only).
    """

    offline: bool
    promised: int | None = None
    written: int = 0
    unreadable: int = 0
    failed: int = 0
    dropped: int = 0
    reason: StopReason = StopReason.END_OF_STREAM
    detail: str = ""
    signal_number: int | None = None

    def exit_code(self) -> int:
        if self.reason is StopReason.SIGNAL and self.signal_number is not None:
            return 128 + self.signal_number
        if self.reason in (StopReason.OUTPUT_FAILED, StopReason.CAMERA_FAILED, StopReason.SIGNAL):
            return 1
        if self.reason is StopReason.QUIT:
            return 0
        if self.offline:
            return 0 if self.promised is not None and self.written >= self.promised and not self.failed else 1
        return 0 if self.written > 0 else 1

    def summary(self) -> str:
        """One line: how the run ended and what it delivered, e.g. "done: 300 of 300 frames written"."""
        outcome = "done" if self.exit_code() == 0 else "incomplete"
        if self.reason is StopReason.QUIT:
            outcome = "quit"
        elif self.reason is StopReason.SIGNAL and self.signal_number is not None:
            outcome = f"stopped by {signal.Signals(self.signal_number).name}"
        elif self.reason in (StopReason.OUTPUT_FAILED, StopReason.CAMERA_FAILED):
            outcome = f"stopped: {self.detail or self.reason.value}"
        counted = f"{self.written} of {self.promised}" if self.promised is not None else f"{self.written}"
        parts = [f"{outcome}: {counted} frames written"]
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable frames of the driving video skipped")
        if self.failed:
            parts.append(f"{self.failed} frames failed in inference")
        if self.dropped:
            parts.append(f"{self.dropped} stale frames dropped")
        if self.written == 0 and not self.offline and self.reason is not StopReason.SIGNAL:
            parts.append("no frame was delivered")
        return "; ".join(parts)

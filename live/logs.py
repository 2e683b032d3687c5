"""Where the tool's messages go: short lines on the terminal, everything with tracebacks in a log file.

- stderr: the engine's progress and warnings (INFO and up), e.g. what a slow
  first start is doing.  The status board prints its own lines, with their
  time stamps, so ``live.status`` records are not repeated here.
- ``<data dir>/logs/fomm-live.log`` (rotated at 1 MB, three kept): every
  record at DEBUG and up, with the tracebacks of errors the threads survived.
- The libraries' own chatter (OpenCV's capture warnings, FFmpeg's decoder
  messages, mediapipe's and TFLite's start-up lines) stays off the terminal
  unless ``verbose``.  What their native code writes straight to file
  descriptor 2 cannot be turned off from Python, so :func:`divert_native_stderr`
  points that descriptor at a pipe whose lines go to the log file, while
  Python's own ``sys.stderr`` keeps writing to the terminal.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
import threading
from pathlib import Path

from engine.weights import cache_root

LOG_NAME = "fomm-live.log"
OPENCV_LOG_SILENT, OPENCV_LOG_INFO = 0, 4  # cv2.setLogLevel's levels (cv::utils::logging::LogLevel)
QUIET_ENVIRONMENT = {  # read by mediapipe's C++ core (glog, absl) and TFLite when they are first imported
    "GLOG_minloglevel": "2",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "ABSL_MIN_LOG_LEVEL": "2",
}


class _NotStatus(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("live.status")


def setup_logging(verbose: bool = False) -> tuple[Path | None, str | None]:
    """Configure the root logger for a run of the tool; returns (the log file, or None and why there is none)."""
    if not verbose:
        divert_native_stderr()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    terminal = logging.StreamHandler()
    terminal.setLevel(logging.DEBUG if verbose else logging.INFO)
    terminal.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    terminal.addFilter(_NotStatus())
    root.addHandler(terminal)
    quiet_libraries(verbose)
    path = cache_root() / "logs" / LOG_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=1 << 20, backupCount=3, encoding="utf-8")
    except OSError as error:
        return None, f"no log file: {path.parent} is not writable ({error.strerror or error})"
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    return path, None


def quiet_libraries(verbose: bool) -> None:
    """Keep OpenCV's, FFmpeg's (PyAV) and mediapipe's own log lines off the terminal unless ``verbose``."""
    import cv2

    set_log_level = getattr(cv2, "setLogLevel", None) or cv2.utils.logging.setLogLevel  # OpenCV 5 moved it
    if verbose:
        set_log_level(OPENCV_LOG_INFO)
        return
    set_log_level(OPENCV_LOG_SILENT)
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET: OpenCV's own FFmpeg build
    try:
        import av.logging
    except ImportError:
        return
    av.logging.set_level(None)  # no FFmpeg messages at all: decode errors are counted and reported by the tool
    for noisy in ("absl", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def divert_native_stderr() -> None:
    """Send what native libraries write to file descriptor 2 into the log file (logger ``native``), keeping
    Python's ``sys.stderr`` on the terminal.  Once per process; a no-op where stderr has no file descriptor."""
    global _diverted
    if _diverted:
        return
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
    except (OSError, ValueError, AttributeError):  # stderr is not a real file (an embedding host, a test runner)
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = io.TextIOWrapper(io.FileIO(terminal, "w"), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    threading.Thread(target=_forward_native_lines, args=(read_end,), name="native-stderr", daemon=True).start()
    _diverted = True


_diverted = False


def _forward_native_lines(read_end: int) -> None:
    native = logging.getLogger("native")
    with io.FileIO(read_end, "r") as pipe:
        for line in io.TextIOWrapper(pipe, encoding="utf-8", errors="backslashreplace"):
            native.debug("%s", line.rstrip())

"""Frame sources: a webcam by index, or a video file standing in for one."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np


class CameraError(RuntimeError):
    """The camera could not be opened or stopped delivering frames."""


class FrameSource(Protocol):
    """What the capture thread reads from.  ``read`` returns an HxWx3 uint8 RGB frame,
    None at the end of a finite stream, and raises :class:`CameraError` when the device fails."""

    name: str
    fps: float
    frame_count: int | None  # known length of a finite stream
    realtime: bool  # a live device (True) or a file that can be read as fast as wanted (False)

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class OpenCVSource:
    """A webcam (integer index) or a video file, read with OpenCV.  Frames come out RGB."""

    def __init__(self, camera: int | str, width: int = 1280, height: int = 720, fps: float = 30.0):
        self.camera = camera
        self.is_file = not isinstance(camera, int)
        if self.is_file and not Path(camera).is_file():
            raise CameraError(f"video file not found: {camera} (expected a webcam index like 0, or a video file)")
        self.name = f"video file {camera}" if self.is_file else f"webcam {camera}"
        self.realtime = not self.is_file
        self._requested = (width, height, fps)
        self.fps = fps
        self.frame_count: int | None = None
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        capture = cv2.VideoCapture(self.camera)
        if not capture.isOpened():
            raise CameraError(f"cannot open {self.name}")
        if self.is_file:
            self.fps = capture.get(cv2.CAP_PROP_FPS) or self.fps
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            self.frame_count = count if count > 0 else None
        else:
            width, height, fps = self._requested
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            capture.set(cv2.CAP_PROP_FPS, fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
            self.fps = capture.get(cv2.CAP_PROP_FPS) or fps
        self._capture = capture

    def read(self) -> np.ndarray | None:
        if self._capture is None:
            raise CameraError(f"{self.name} is not open")
        ok, frame = self._capture.read()
        if not ok:
            if self.is_file:
                return None
            raise CameraError(f"{self.name} stopped delivering frames")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def parse_camera(value: str) -> int | str:
    """``--camera``: a webcam index ("0") or a video file path."""
    return int(value) if value.isdigit() else value

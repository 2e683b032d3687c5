"""Where output frames go: a virtual camera here, a video file in :mod:`live.video_file`.  Several at once.

Every sink takes ``send(frame)`` with an HxWx3 uint8 RGB frame of the size it
was opened with, and ``close()`` exactly once.  Opening a sink that cannot
work raises :class:`SinkError` with a message that says how to fix it.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Protocol

import numpy as np

# What creates a v4l2loopback device on Debian/Ubuntu (video_nr=10 keeps it clear of real webcams).
V4L2LOOPBACK_FIX = (
    "sudo apt install v4l2loopback-dkms && "
    'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 video_nr=10 card_label="fomm-live"'
)


class SinkError(RuntimeError):
    """A sink cannot be opened or has failed."""


class Sink(Protocol):
    """required: when ``send`` fails, the run stops (a video file: it was asked for, and frames would be lost);
    otherwise the sink is closed and the run goes on without it (a virtual camera)."""

    name: str
    required: bool

    def send(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


def check_frame(frame: np.ndarray, width: int, height: int, sink: str) -> None:
    if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
        raise ValueError(f"{sink}: unexpected frame {frame.shape} {frame.dtype}, expected ({height}, {width}, 3) uint8")


def loopback_devices() -> list[str]:
    """The v4l2loopback devices on Linux (virtual video4linux devices)."""
    return sorted(f"/dev/{p.name}" for p in Path("/sys/devices/virtual/video4linux").glob("video*"))


class VirtualCamera:
    """A virtual camera through pyvirtualcam: v4l2loopback on Linux, the OBS virtual camera elsewhere."""

    required = False

    def __init__(self, width: int, height: int, fps: float, device: str | None = None):
        self.width, self.height = width, height
        if platform.system() == "Linux" and device is None and not loopback_devices():
            raise SinkError(f"no virtual camera: no v4l2loopback device exists. Create one with: {V4L2LOOPBACK_FIX}")
        try:
            import pyvirtualcam

            self._camera = pyvirtualcam.Camera(width=width, height=height, fps=fps, device=device,
                                               fmt=pyvirtualcam.PixelFormat.RGB)
        except Exception as error:  # pyvirtualcam raises RuntimeError or backend-specific errors
            fix = V4L2LOOPBACK_FIX if platform.system() == "Linux" else "install OBS Studio 28+ and start its virtual camera once"
            raise SinkError(f"no virtual camera: {error}. Fix: {fix}") from None
        self.name = f"virtual camera {self._camera.device}"

    def send(self, frame: np.ndarray) -> None:
        check_frame(frame, self.width, self.height, self.name)
        self._camera.send(frame)

    def close(self) -> None:
        self._camera.close()

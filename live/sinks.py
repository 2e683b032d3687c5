"""Where output frames go: a virtual camera, a video file.  Several at once.

Every sink takes ``send(frame)`` with an HxWx3 uint8 RGB frame of the size it
was opened with, and ``close()`` exactly once.  Opening a sink that cannot
work raises :class:`SinkError` with a message that says how to fix it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

# What creates a v4l2loopback device on Debian/Ubuntu (video_nr=10 keeps it clear of real webcams).
V4L2LOOPBACK_FIX = (
    "sudo apt install v4l2loopback-dkms && "
    'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 video_nr=10 card_label="fomm-live"'
)


class SinkError(RuntimeError):
    """A sink cannot be opened or has failed."""


class Sink(Protocol):
    name: str

    def send(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


def _check_frame(frame: np.ndarray, width: int, height: int, sink: str) -> None:
    if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
        raise ValueError(f"{sink}: unexpected frame {frame.shape} {frame.dtype}, expected ({height}, {width}, 3) uint8")


def loopback_devices() -> list[str]:
    """The v4l2loopback devices on Linux (virtual video4linux devices)."""
    return sorted(f"/dev/{p.name}" for p in Path("/sys/devices/virtual/video4linux").glob("video*"))


class VirtualCamera:
    """A virtual camera through pyvirtualcam: v4l2loopback on Linux, the OBS virtual camera elsewhere."""

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
        _check_frame(frame, self.width, self.height, self.name)
        self._camera.send(frame)

    def close(self) -> None:
        self._camera.close()


class VideoFile:
    """An MP4 file.  With ``audio_from`` (the driving video) and ffmpeg present, its sound is copied in on close.

    Frames are written to ``<path>.partial.mp4`` and moved into place on close,
    so an interrupted run never leaves a broken file at ``path``.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, audio_from: str | None = None):
        self.path = Path(path)
        self.width, self.height = width, height
        self.audio_from = audio_from
        self.name = f"video file {self.path}"
        self.frames = 0
        self._partial = self.path.with_name(self.path.stem + ".partial.mp4")
        self._writer = cv2.VideoWriter(str(self._partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not self._writer.isOpened():
            raise SinkError(f"cannot write {self.path}: OpenCV could not open an MP4 writer there")

    def send(self, frame: np.ndarray) -> None:
        _check_frame(frame, self.width, self.height, self.name)
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        self._writer.release()
        if self.audio_from and shutil.which("ffmpeg") and _has_audio(self.audio_from):
            muxed = self.path.with_name(self.path.stem + ".audio.mp4")
            command = ["ffmpeg", "-y", "-loglevel", "error", "-i", str(self._partial), "-i", self.audio_from,
                       "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest", str(muxed)]
            if subprocess.run(command, capture_output=True).returncode == 0:
                os.replace(muxed, self.path)
                self._partial.unlink()
                return
            muxed.unlink(missing_ok=True)
        os.replace(self._partial, self.path)


def _has_audio(path: str) -> bool:
    if not shutil.which("ffprobe"):
        return False
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index",
                            "-of", "csv=p=0", path], capture_output=True, text=True)
    return bool(probe.stdout.strip())

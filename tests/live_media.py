"""Generated test media: driving videos (the fixture astronaut moving, or no face at all) and avatar files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np

from .conftest import SMALL_PARITY_DIR

REPO = Path(__file__).resolve().parent.parent
# The small fixture model on the eager backend: these runs test the tool around the model, and auto would build
# the OpenVINO (or ONNX) graphs of every fresh cache first, 10 to 20 s a run.
MODEL_ARGS = ["--config", str(SMALL_PARITY_DIR / "config.yaml"), "--checkpoint",
              str(SMALL_PARITY_DIR / "checkpoint.pth.tar"), "--backend", "eager"]


def astronaut() -> np.ndarray:
    with np.load(SMALL_PARITY_DIR / "inputs.npz") as inputs:
        return inputs["source"]


def driving_frames(count: int, face: bool = True) -> list[np.ndarray]:
    """640x480 RGB frames: the face nodding and turning (or an empty grey room)."""
    head = cv2.resize(astronaut(), (300, 300))
    frames = []
    for t in range(count):
        frame = np.full((480, 640, 3), 60, np.uint8)
        if face:
            matrix = cv2.getRotationMatrix2D((150, 150), 10 * np.sin(t / 5), 1.0 + 0.05 * np.sin(t / 7))
            matrix[:, 2] += (15 * np.sin(t / 9), 10 * np.cos(t / 6))
            frame[90:390, 170:470] = cv2.warpAffine(head, matrix, (300, 300), borderMode=cv2.BORDER_REFLECT)
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def add_tone(video: Path, out: Path) -> Path:
    """The video with a 440 Hz tone as its sound track (needs ffmpeg)."""
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(video), "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=44100", "-shortest", "-c:v", "copy", "-c:a", "aac", str(out)],
                   check=True)
    return out


def write_avatar(path: Path, size: tuple[int, int] = (800, 600)) -> Path:
    """A portrait-shaped photo with the astronaut's head in its upper half."""
    height, width = size
    photo = np.full((height, width, 3), 90, np.uint8)
    side = min(width, height) * 3 // 4
    photo[height // 8:height // 8 + side, (width - side) // 2:(width + side) // 2] = cv2.resize(astronaut(), (side, side))
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    return path


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def has_audio(path: Path) -> bool:
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=codec_name",
                            "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    return bool(probe.stdout.strip())


def ffmpeg_missing() -> bool:
    return shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None

"""Frame sources: a webcam by index (OpenCV), or a video file standing in for one (PyAV).

The two fail differently, and are told apart from the start.  A webcam that
worked and went away may come back: reading it raises :class:`CameraError`
and the capture thread reopens it.  A video file either opens, with at least
one decodable frame, or :meth:`VideoFileSource.open` raises and the run ends
with that message; frames the decoder rejects in the middle are skipped and
counted (``unreadable``), and a long run of them ends the stream with an error.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Iterator, Protocol

import cv2
import numpy as np


class CameraError(RuntimeError):
    """The camera or video file could not be opened, or stopped delivering frames."""


class FrameSource(Protocol):
    """What the capture thread reads from.  ``read`` returns an HxWx3 uint8 RGB frame, None at the end of a finite
    stream, and raises :class:`CameraError` when the device or file fails."""

    name: str
    fps: float
    frame_count: int | None  # known length of a finite stream
    realtime: bool  # a live device (True) or a file that can be read as fast as wanted (False)
    unreadable: int  # frames skipped because they could not be decoded

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class WebcamSource:
    """A webcam by OpenCV index.  Frames come out RGB, at the requested size where the device offers it."""

    realtime = True
    frame_count = None
    unreadable = 0

    def __init__(self, index: int, width: int = 1280, height: int = 720, fps: float = 30.0):
        self.index = index
        self.name = f"webcam {index}"
        self._requested = (width, height, fps)
        self.fps = fps
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        capture = cv2.VideoCapture(self.index)
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"cannot open {self.name}")
        width, height, fps = self._requested
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        capture.set(cv2.CAP_PROP_FPS, fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
        self.fps = capture.get(cv2.CAP_PROP_FPS) or fps
        self._capture = capture

    def read(self) -> np.ndarray:
        if self._capture is None:
            raise CameraError(f"{self.name} is not open")
        ok, frame = self._capture.read()
        if not ok:
            raise CameraError(f"{self.name} stopped delivering frames")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class VideoFileSource:
    """A video file read in order with PyAV (FFmpeg's decoders), frames RGB.

    max_unreadable_run: how many undecodable frames in a row are skipped
    before the file is declared broken (:class:`CameraError`).
    """

    realtime = False

    def __init__(self, path: str | Path, max_unreadable_run: int = 25):
        self.path = Path(path)
        if not self.path.is_file():
            what = "a folder" if self.path.is_dir() else "not found"
            raise CameraError(f"video file {what}: {path} (expected a webcam index like 0, or a video file)")
        self.name = f"video file {path}"
        self.max_unreadable_run = max_unreadable_run
        self.fps = 30.0
        self.frame_count: int | None = None
        self.unreadable = 0
        self._container = None
        self._frames: Iterator[np.ndarray] | None = None
        self._first: np.ndarray | None = None

    def open(self) -> None:
        """Open the file and decode its first frame; raises :class:`CameraError` if either is impossible."""
        import av

        self.close()
        self.unreadable = 0
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, UnicodeDecodeError) as error:
            raise CameraError(f"cannot read {self.path} as a video ({error}); expected a video file such as an .mp4") \
                from None
        if not container.streams.video:
            container.close()
            raise CameraError(f"{self.path} holds no video stream; expected a video file such as an .mp4")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        self.frame_count = stream.frames or None
        self._container = container
        self._frames = self._decode(container, stream)
        self._first = next(self._frames, None)
        if self._first is None:
            self.close()
            raise CameraError(f"{self.path} holds no decodable video frame")

    def read(self) -> np.ndarray | None:
        if self._frames is None:
            raise CameraError(f"{self.name} is not open")
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return next(self._frames, None)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self._first = None, None, None

    def _decode(self, container, stream) -> Iterator[np.ndarray]:
        import av

        run = 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                self.unreadable += 1
                run += 1
                if run > self.max_unreadable_run:
                    raise CameraError(f"{self.path}: {run} frames in a row cannot be decoded; the file is damaged") \
                        from None
                continue
            for frame in frames:
                run = 0
                yield frame.to_ndarray(format="rgb24")


def parse_camera(value: str) -> int | str:
    """``--camera``: a webcam index ("0") or a video file path."""
    return int(value) if value.isdigit() else value


def list_cameras() -> list[str]:
    """The video capture devices this machine has, as a user would pick them (e.g. "0: /dev/video0 (HD Webcam)").

    Linux lists /sys/class/video4linux (v4l2loopback devices are marked: they are outputs, not webcams);
    elsewhere OpenCV indices 0 to 4 are tried.
    """
    if platform.system() == "Linux":
        found = []
        for node in sorted(Path("/sys/class/video4linux").glob("video*"), key=lambda p: int(p.name[5:] or 0)):
            name = (node / "name").read_text().strip() if (node / "name").is_file() else "unknown"
            virtual = "/virtual/" in str(node.resolve())
            found.append(f"{node.name[5:]}: /dev/{node.name} ({name}{', a virtual camera' if virtual else ''})")
        return found
    found = []
    for index in range(5):
        capture = cv2.VideoCapture(index)
        if capture.isOpened():
            found.append(f"{index}")
        capture.release()
    return found


def open_camera(value: str) -> FrameSource:
    """The source ``--camera`` names, opened once to prove it works, then closed (the capture thread reopens it).

    Raises :class:`CameraError`: a file that is not a readable video, or a webcam that cannot be opened (the
    message lists the cameras found).
    """
    camera = parse_camera(value)
    source: FrameSource = VideoFileSource(camera) if isinstance(camera, str) else WebcamSource(camera)
    try:
        source.open()
    except CameraError as error:
        if isinstance(source, VideoFileSource):
            raise
        cameras = list_cameras()
        found = "; ".join(cameras) if cameras else "none"
        raise CameraError(f"{error}: it never opened. Cameras found on this machine: {found}. "
                          "Pass --camera INDEX, or a video file to use as the camera") from None
    finally:
        source.close()
    return source

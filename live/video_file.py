"""The ``--output`` video file: H.264 in MP4 through PyAV, written so that it stays playable whatever happens.

Frames are encoded into ``<name>.partial.mp4`` as a fragmented MP4 (one
fragment per second, each self-contained), so the frames finished before a
crash, a ``kill -9`` or a full disk still play.  :meth:`VideoFile.close` ends
the last fragment, copies the driving video's sound in when there is one
(ffmpeg), and moves the file into place.  A write that fails raises
:class:`~live.sinks.SinkError` at once: the run stops instead of encoding into
the void.  Where PyAV has no H.264 encoder the file is MPEG-4 Part 2 through
OpenCV, which many players and browsers do not play, and the log says so.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .sinks import SinkError, check_frame

log = logging.getLogger(__name__)

H264_OPTIONS = {"preset": "veryfast", "crf": "20"}  # visually clean at 720p, and fast enough to keep up live
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


class VideoFile:
    """An MP4 file of ``width`` x ``height`` frames at ``fps``; ``audio_from``: a video whose sound is copied in.

    required: a run that cannot write its file stops (see :class:`live.sinks.Sink`).
    """

    required = True

    def __init__(self, path: str | Path, width: int, height: int, fps: float, audio_from: str | None = None):
        self.path = Path(path)
        self.width, self.height = width, height
        self.audio_from = audio_from
        self.name = f"video file {self.path}"
        self.frames = 0
        self.partial = self.path.with_name(self.path.stem + ".partial.mp4")
        self._encoder = _H264Encoder.open(self.partial, width, height, fps) or _Mpeg4Encoder(self.partial, width, height, fps)
        self.codec = self._encoder.codec

    def send(self, frame: np.ndarray) -> None:
        """Append one HxWx3 uint8 RGB frame; raises SinkError when it cannot be written (disk full, ...)."""
        check_frame(frame, self.width, self.height, self.name)
        try:
            self._encoder.write(frame)
        except OSError as error:
            raise SinkError(f"writing {self.path} failed after {self.frames} frames: {error}") from error
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it into place; a file with no frame is removed.  Raises SinkError if finishing
        failed: what was written before stays in ``path``, playable up to its last complete second."""
        try:
            self._encoder.close()
        except OSError as error:
            finished = False
            failure = SinkError(f"finishing {self.path} failed ({error}); it keeps the frames written before, "
                                "up to its last complete second")
        else:
            finished, failure = True, None
        if self.frames == 0:
            self.partial.unlink(missing_ok=True)
            log.warning("%s: no frame was written, so no file was made", self.path)
            if failure:
                raise failure
            return
        if finished and self.audio_from:
            self._copy_sound()
        os.replace(self.partial, self.path)
        if failure:
            raise failure

    def _copy_sound(self) -> None:
        """Mux the sound of ``audio_from`` into the partial file, saying so when it cannot be done."""
        if not has_audio(self.audio_from):
            return
        if shutil.which("ffmpeg") is None:
            log.warning("the sound of %s was not copied into %s: ffmpeg is not installed (e.g. apt install ffmpeg)",
                        self.audio_from, self.path)
            return
        muxed = self.path.with_name(self.path.stem + ".audio.mp4")
        command = ["ffmpeg", "-y", "-loglevel", "error", "-i", str(self.partial), "-i", self.audio_from,
                   "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest", str(muxed)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(muxed, self.partial)
            return
        muxed.unlink(missing_ok=True)
        reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        log.warning("the sound of %s was not copied into %s: ffmpeg failed: %s", self.audio_from, self.path, reason)


def has_audio(path: str | Path) -> bool:
    """Whether a media file has a sound track (False for anything PyAV cannot open)."""
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except (av.FFmpegError, OSError):
        return False


def h264_unavailable_reason() -> str | None:
    """Why this machine cannot write H.264 (PyAV missing, or its FFmpeg lacks libx264), or None if it can."""
    try:
        import av
    except ImportError as error:
        return f"PyAV is not installed ({error}): pip install av"
    if "libx264" not in av.codecs_available:
        return "PyAV's FFmpeg has no libx264 encoder"
    return None


class _WatchedFile:
    """The file PyAV writes the MP4 through, which remembers the first failed write.

    FFmpeg's MP4 muxer does not always pass a failed write on (a full disk
    during a fragment flush went unreported, measured with PyAV 18), so the
    encoder asks this file instead.
    """

    def __init__(self, path: Path):
        self._file = open(path, "wb", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data)
        try:
            while view:
                written = self._file.write(view)
                if not written:
                    raise OSError(f"wrote 0 of {len(view)} bytes")
                view = view[written:]
        except OSError as error:
            self.error = self.error or error
            raise
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


class _H264Encoder:
    codec = "H.264"

    def __init__(self, file: _WatchedFile, container, stream):
        self._file, self._container, self._stream = file, container, stream

    @classmethod
    def open(cls, path: Path, width: int, height: int, fps: float) -> "_H264Encoder | None":
        reason = h264_unavailable_reason()
        if reason:
            log.warning("writing MPEG-4 Part 2, which browsers and many players do not play: %s", reason)
            return None
        import av

        try:
            file = _WatchedFile(path)
            container = av.open(file, "w", format="mp4", options=FRAGMENTED_MP4)
        except (OSError, av.FFmpegError) as error:
            raise SinkError(f"cannot write {path}: {error}") from None
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {**H264_OPTIONS, "g": str(max(1, round(fps)))}  # a keyframe, so a fragment, every second
        return cls(file, container, stream)

    def write(self, frame: np.ndarray) -> None:
        """Encode one frame; raises OSError if any write so far failed."""
        import av

        try:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        except av.FFmpegError as error:
            raise self._file.error or OSError(str(error)) from None
        if self._file.error:
            raise self._file.error

    def close(self) -> None:
        """Flush the encoder and end the last fragment; raises OSError if a write failed."""
        import av

        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except av.FFmpegError as error:
            raise self._file.error or OSError(str(error)) from None
        finally:
            self._file.close()
        if self._file.error:
            raise self._file.error


class _Mpeg4Encoder:
    """OpenCV's MPEG-4 Part 2 writer: the fallback.  It reports no write errors, so a full disk goes unnoticed."""

    codec = "MPEG-4 Part 2"

    def __init__(self, path: Path, width: int, height: int, fps: float):
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not self._writer.isOpened():
            raise SinkError(f"cannot write {path}: OpenCV could not open an MP4 writer there")

    def write(self, frame: np.ndarray) -> None:
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()

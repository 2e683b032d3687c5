"""The inference thread's work: one camera frame in, one output frame out, through the stages of live/stages/.

:class:`FrameProcessor` only orders the stages and carries out the hotkeys'
requests; each stage does one job.  The render stage is handed in: the
generator in this process (:class:`live.stages.render.LocalRender`) or a
server (``live.remote``); everything else is the same code either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from engine import FirstOrderModel

from .avatars import Avatar, AvatarLibrary
from .framing import DrivingFramer, FaceDetector
from .hotkeys import LiveState, Request
from .stages.avatar import AvatarStage
from .stages.compose import Composer
from .stages.motion import MotionStage
from .stages.pose_search import PoseSearchStage
from .stages.render import LocalRender, RenderStage
from .status import StatusBoard

# A face missed for less (motion blur, a hand passing, a detector's off frame) is not worth a message: the crop holds.
FACE_LOST_AFTER_S = 0.3


@dataclass
class Processed:
    """output: the frame for the sinks (HxWx3 uint8 RGB at the output size); inset: the camera crop as the
    model saw it, with the avatar overlaid at the overlay opacity; timings: milliseconds per stage;
    searching: whether a pose search (key F) is running; render_dropped: what the render stage's link dropped."""

    output: np.ndarray
    inset: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    searching: bool = False
    render_dropped: int = 0


class FrameProcessor:
    """Frames the face, moves the avatar's keypoints, renders, and composes the output frame.

    output_size: (width, height) of the output; square: send the bare
    animated square (resized to the output size) instead of pasting it back;
    adapt_scale: see :class:`engine.animator.MotionDriver`; render: the render
    stage (default: the generator here); clock: seconds, monotonic (the
    camera crop's smoothing and how long a face has been missing).  The other
    motion settings (relative, movement, smoothing) come with the
    :class:`LiveState` of each frame.
    """

    def __init__(self, model: FirstOrderModel, library: AvatarLibrary, status: StatusBoard,
                 output_size: tuple[int, int], square: bool = False, adapt_scale: bool = True,
                 render: RenderStage | None = None, clock: Callable[[], float] = time.monotonic):
        self.status = status
        self.clock = clock
        self._face_missing_since: float | None = None
        side = model.frame_size[0]
        self.avatars = AvatarStage(library, status, side)
        self.framer = DrivingFramer(FaceDetector(long_range=False), side)
        self.search = PoseSearchStage(status)
        self.motion = MotionStage(model, status, adapt_scale)
        self.render = render or LocalRender(model)
        self.composer = Composer(output_size, square)
        self._animated: np.ndarray | None = None  # the last rendered square, held while no new one is ready
        self._last_frame: np.ndarray | None = None
        self._show(self.avatars.want(0))

    @property
    def avatar(self) -> Avatar:
        return self.avatars.current

    def handle(self, request: Request) -> int | None:
        """Carry out a request from the hotkeys; returns the new number of avatars after a rescan, else None."""
        if request is Request.CALIBRATE:
            self.search.cancel()
            self.calibrate()
        elif request is Request.TOGGLE_SEARCH:
            if self.search.running:
                best = self.search.finish()
                if best is not None:
                    crop, distance = best
                    self.motion.calibrate(crop, f"calibrated on the best-matching pose (distance {distance:.4f})")
            else:
                self.search.start(self.avatar.framed.crop)
        elif request is Request.RELOAD_AVATARS:
            shown = self.avatars.index
            count = self.avatars.reload()
            self._show(self.avatars.want(shown))
            return count
        return None

    def calibrate(self) -> None:
        """Re-place the camera crop around the face and take the current pose as the reference."""
        if self._last_frame is None:
            self.status.event("calibration skipped: no camera frame yet")
            return
        now = self.clock()
        if not self.framer.calibrate(self._last_frame, now):
            self.status.event("calibration: no face in view, keeping the crop where it is")
        self.motion.calibrate(self.framer(self._last_frame, now).crop, "calibrated on the current pose")

    def process(self, frame: np.ndarray, state: LiveState) -> Processed:
        """One camera frame (HxWx3 uint8 RGB) -> the output frame and the preview inset."""
        self._show(self.avatars.want(state.avatar_index))
        self.motion.follow(state)
        self.framer.zoom, self.framer.offset = state.zoom, state.offset
        timings = {}
        start = time.perf_counter()
        now = self.clock()
        framed = self.framer(frame, now)
        self._last_frame = frame
        self._report_face(framed.face_found, now)
        self.search.offer(framed.crop)
        timings["framing"] = _ms(start)

        if state.passthrough:
            start = time.perf_counter()
            output = self.composer.passthrough(frame)
        else:
            start = time.perf_counter()
            keypoints = self.motion(framed.crop)
            timings["keypoints"] = _ms(start)
            animated = self.render.render(keypoints)
            timings.update(self.render.timings())
            self._animated = animated if animated is not None else self._animated
            start = time.perf_counter()
            output = self.composer.output(self._animated if self._animated is not None else self.avatar.framed.crop)
        inset = self.composer.inset(framed.crop, state)
        timings["compose"] = _ms(start)
        return Processed(output, inset, timings, searching=self.search.running, render_dropped=self.render.dropped())

    def close(self) -> None:
        self.avatars.close()
        self.framer.detector.close()
        self.search.close()
        self.render.close()

    def _report_face(self, found: bool, now: float) -> None:
        """The "no face" condition on screen: at once while no face has been seen (the crop sits at the centre),
        after FACE_LOST_AFTER_S of misses once one has (the crop holds where the face was)."""
        if found:
            self._face_missing_since = None
            self.status.clear("face", "face found again")
        elif not self.framer.anchored:
            self.status.set("face", "no face in view: using the centre of the camera image")
        else:
            if self._face_missing_since is None:
                self._face_missing_since = now
            if now - self._face_missing_since >= FACE_LOST_AFTER_S:
                self.status.set("face", "no face in view: the crop stays where the face was last seen")

    def _show(self, avatar: Avatar | None) -> None:
        """Hand a newly selected avatar to the stages that use it (None: the selection did not change)."""
        if avatar is None:
            return
        self.motion.set_avatar(self.render.set_avatar(avatar.framed.crop))
        self.composer.set_avatar(avatar)
        self._animated = None  # the last avatar's face must not be pasted onto this one while its first renders


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3

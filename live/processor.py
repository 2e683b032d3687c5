"""The inference stage: one camera frame in, one output frame out, following the live settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from engine import Animator, EngineError, FirstOrderModel

from .avatars import Avatar, AvatarError, AvatarLibrary
from .framing import DrivingFramer, FaceDetector
from .hotkeys import LiveState, Request
from .pasteback import PasteBack, cover
from .pose_match import BestReferenceSearch, FaceLandmarks
from .status import StatusBoard


@dataclass
class Processed:
    """output: the frame for the sinks (HxWx3 uint8 RGB at the output size); inset: the camera crop as the
    model saw it, with the avatar overlaid at the overlay opacity; timings: milliseconds per stage;
    searching: whether a pose search (key F) is running."""

    output: np.ndarray
    inset: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    searching: bool = False


class FrameProcessor:
    """Frames the face, animates the avatar, and composes the output frame.

    output_size: (width, height) of the output; square: send the bare animated
    square (resized to the output size) instead of pasting it back;
    adapt_scale: see :class:`engine.Animator`.  The other motion settings
    (relative, movement, smoothing) come with the :class:`LiveState` of each frame.
    """

    def __init__(self, model: FirstOrderModel, library: AvatarLibrary, status: StatusBoard,
                 output_size: tuple[int, int], square: bool = False, adapt_scale: bool = True):
        self.model = model
        self.library = library
        self.status = status
        self.output_size = output_size
        self.square = square
        self.side = model.frame_size[0]
        self.avatar_detector = FaceDetector(long_range=True)
        self.framer = DrivingFramer(FaceDetector(long_range=False), self.side)
        self.adapt_scale = adapt_scale
        self.avatar_index = -1
        self.avatar: Avatar | None = None
        self.animator: Animator | None = None
        self.paste_back: PasteBack | None = None
        self._landmarks: FaceLandmarks | None = None
        self._search: BestReferenceSearch | None = None
        self._last_frame: np.ndarray | None = None
        self._unloadable = -1  # an avatar index that failed to load, not retried every frame
        self.select_avatar(0)

    def select_avatar(self, index: int) -> None:
        """Load avatar ``index``: frames it and re-encodes only the source (the reference pose is kept)."""
        avatar = self.library.load(index, self.avatar_detector, self.side)
        if self.animator is None:
            self.animator = Animator(self.model, avatar.framed.crop, adapt_scale=self.adapt_scale)
        else:
            self.animator.set_source(avatar.framed.crop)
        self.avatar, self.avatar_index, self._unloadable = avatar, index, -1
        width, height = self.output_size
        self.paste_back = None if self.square else PasteBack(avatar.photo, avatar.framed.square, width, height)
        if avatar.framed.face_found:
            self.status.clear("avatar")
        else:
            self.status.set("avatar", f"no face found in avatar {avatar.name}: using its centre")
        self.status.event(f"avatar {index + 1}/{len(self.library)}: {avatar.name}")

    def handle(self, request: Request) -> int | None:
        """Carry out a request from the hotkeys; returns the new number of avatars after a rescan, else None."""
        if request is Request.CALIBRATE:
            self._search = None
            self.calibrate()
        elif request is Request.TOGGLE_SEARCH:
            if self._search is None:
                self._start_search()
            else:
                self._finish_search()
        elif request is Request.RELOAD_AVATARS:
            self.library.scan()
            self.select_avatar(min(self.avatar_index, len(self.library) - 1))
            return len(self.library)
        return None

    def calibrate(self) -> None:
        """Re-place the camera crop around the face and take the current pose as the reference."""
        if self._last_frame is None:
            self.status.event("calibration skipped: no camera frame yet")
            return
        now = time.monotonic()
        if not self.framer.calibrate(self._last_frame, now):
            self.status.event("calibration: no face in view, keeping the crop where it is")
        crop = self.framer(self._last_frame, now).crop
        self._calibrate_on(crop, "calibrated on the current pose")

    def process(self, frame: np.ndarray, state: LiveState) -> Processed:
        """One camera frame (HxWx3 uint8 RGB) -> the output frame and the preview inset."""
        wanted = min(state.avatar_index, len(self.library) - 1)  # the state may predate a rescan that shrank the folder
        if wanted not in (self.avatar_index, self._unloadable):
            try:
                self.select_avatar(wanted)
            except AvatarError as error:  # keep animating the current avatar; say why the other one is not shown
                self._unloadable = wanted
                self.status.set("avatar", f"{error}; still showing {self.avatar.name}")
        self._apply_settings(state)
        timings = {}
        start = time.perf_counter()
        framed = self.framer(frame, time.monotonic())
        self._last_frame = frame
        if framed.face_found:
            self.status.clear("face", "face found again")
        else:
            self.status.set("face", "no face in view: using the centre of the camera image")
        if self._search is not None:
            self._search.offer(framed.crop, self._landmarks(framed.crop))
        timings["framing"] = _ms(start)

        start = time.perf_counter()
        width, height = self.output_size
        if state.passthrough:
            output = cover(frame, width, height)
        else:
            keypoints = self.animator.detect(framed.crop)
            timings["keypoints"] = _ms(start)
            start = time.perf_counter()
            animated = self.animator.render(keypoints)
            timings["render"] = _ms(start)
            start = time.perf_counter()
            if self.square:
                output = cv2.resize(animated, (width, height), interpolation=cv2.INTER_LINEAR)
            else:
                output = self.paste_back(animated)
        inset = framed.crop
        if state.overlay > 0:
            inset = cv2.addWeighted(self.avatar.framed.crop, state.overlay, framed.crop, 1 - state.overlay, 0)
        timings["compose"] = _ms(start)
        return Processed(output, inset, timings, searching=self._search is not None)

    def close(self) -> None:
        self.avatar_detector.close()
        self.framer.detector.close()
        if self._landmarks is not None:
            self._landmarks.close()

    def _apply_settings(self, state: LiveState) -> None:
        animator = self.animator
        animator.relative = state.relative
        if animator.movement != state.movement:
            animator.movement = state.movement
        animator.smoothing = state.smoothing
        self.framer.zoom, self.framer.offset = state.zoom, state.offset

    def _calibrate_on(self, crop: np.ndarray, message: str) -> None:
        try:
            self.animator.calibrate(crop)
        except EngineError as error:
            self.status.event(f"calibration failed: {error}")
            return
        self.status.event(message)

    def _start_search(self) -> None:
        if self._landmarks is None:
            self._landmarks = FaceLandmarks(static_images=False)
        avatar_landmarks = FaceLandmarks(static_images=True)
        try:
            target = avatar_landmarks(self.avatar.framed.crop)
        finally:
            avatar_landmarks.close()
        if target is None:
            self.status.event("pose search: no face landmarks in the avatar; press X to calibrate by hand")
            return
        self._search = BestReferenceSearch(target)
        self.status.event("pose search: move your head slowly; press F again to use the best match")

    def _finish_search(self) -> None:
        search, self._search = self._search, None
        if search is None or search.best_frame is None:
            self.status.event("pose search: no face seen, reference unchanged")
            return
        self._calibrate_on(search.best_frame, f"calibrated on the best-matching pose (distance {search.best_distance:.4f})")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


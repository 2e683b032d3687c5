"""Face framing: where the face is, and the square crops the model sees.

The model wants a 256x256 head-and-shoulders square.  Avatars are photos of
any size: :func:`frame_avatar` crops a face-centred square once.  The webcam
crop is set around the face at calibration and then follows the face
(:class:`DrivingFramer`): it stays still while the face moves within a dead
zone, so head motion reaches the avatar, and glides after the face (One-Euro
smoothed) when it leaves the zone.  Without a face the crop falls back to the
centre of the frame and says so; it never raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .face_tasks import FULL_RANGE_MODEL, SHORT_RANGE_MODEL, close_when_python_exits, face_model, mediapipe_image
from .one_euro import OneEuroFilter

CROP_SCALE = 2.0  # crop side / face-box side: head, hair and a little shoulder, like the training crops
CROP_LIFT = 0.1  # raise the crop centre by this fraction of the face box (the box sits low on the head)
EDGE_PX = 2  # a face box this close to the edge of the square it was found in may be cut by it


@dataclass(frozen=True)
class Square:
    """An axis-aligned square in pixel coordinates: centre (cx, cy) and side length."""

    cx: float
    cy: float
    size: float

    def scaled(self, factor: float) -> "Square":
        return Square(self.cx, self.cy, self.size * factor)

    def corners(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), integers, x1 - x0 == y1 - y0."""
        side = max(1, int(round(self.size)))
        x0, y0 = int(round(self.cx - side / 2)), int(round(self.cy - side / 2))
        return x0, y0, x0 + side, y0 + side


@dataclass(frozen=True)
class Face:
    """A detected face: bounding box (x, y, width, height) in pixels and detector score in [0, 1]."""

    x: float
    y: float
    width: float
    height: float
    score: float

    def shifted(self, dx: float, dy: float) -> "Face":
        """The same face in an image whose origin lies (-dx, -dy) from this one's (found in a cut-out at (dx, dy))."""
        return Face(self.x + dx, self.y + dy, self.width, self.height, self.score)

    def square(self, scale: float = CROP_SCALE) -> Square:
        side = max(self.width, self.height)
        return Square(self.x + self.width / 2, self.y + self.height / 2 - CROP_LIFT * side, side * scale)


class FaceDetector:
    """mediapipe's BlazeFace detector through its Tasks API, from the model files shipped in live/face_models/.

    long_range: the full-range model (faces up to 5 m: photos), else the
    short-range one (within 2 m: webcams).  Each frame is detected on its
    own (image mode), as mediapipe's legacy FaceDetection did.
    """

    def __init__(self, long_range: bool = False, min_score: float = 0.5):
        from mediapipe.tasks.python import BaseOptions, vision

        model = face_model(FULL_RANGE_MODEL if long_range else SHORT_RANGE_MODEL)
        options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=model),
                                             running_mode=vision.RunningMode.IMAGE, min_detection_confidence=min_score)
        self._detector = vision.FaceDetector.create_from_options(options)
        close_when_python_exits(self)

    def detect(self, image: np.ndarray) -> Face | None:
        """The most confident face in an HxWx3 uint8 RGB image, or None."""
        result = self._detector.detect(mediapipe_image(image))
        if not result.detections:
            return None
        best = max(result.detections, key=lambda detection: detection.categories[0].score)
        box = best.bounding_box
        return Face(box.origin_x, box.origin_y, box.width, box.height, best.categories[0].score)

    def close(self) -> None:
        self._detector.close()


def centre_square(height: int, width: int) -> Square:
    """The largest square in the middle of a frame."""
    return Square(width / 2, height / 2, min(height, width))


def covering_squares(height: int, width: int) -> list[Square]:
    """The largest squares of a frame, spaced evenly along its long side so that each overlaps the next by at least
    half its side (one square for a square frame; three for 16:9, two for 4:3)."""
    side = min(height, width)
    count = max(1, math.ceil(2 * max(height, width) / side) - 1)
    steps = np.linspace(side / 2, max(height, width) - side / 2, count)
    if width >= height:
        return [Square(float(cx), height / 2, side) for cx in steps]
    return [Square(width / 2, float(cy), side) for cy in steps]


def fit_inside(square: Square, height: int, width: int) -> Square:
    """Shrink and shift ``square`` as little as possible so that it lies within the image."""
    side = min(square.size, height, width)
    cx = min(max(square.cx, side / 2), width - side / 2)
    cy = min(max(square.cy, side / 2), height - side / 2)
    return Square(cx, cy, side)


def crop_square(image: np.ndarray, square: Square, size: int) -> np.ndarray:
    """Cut ``square`` out of ``image`` (replicating the border where it sticks out) and resize to size x size."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = square.corners()
    pad = max(0, -x0, -y0, x1 - width, y1 - height)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    crop = image[y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


@dataclass(frozen=True)
class FramedImage:
    """A square crop for the model: crop (size x size x 3 uint8), where it came from, whether a face was found."""

    crop: np.ndarray
    square: Square
    face_found: bool


def frame_avatar(image: np.ndarray, detector: FaceDetector, size: int) -> FramedImage:
    """Face-centred square of an avatar photo of any size (kept inside the photo), or its centre without a face."""
    height, width = image.shape[:2]
    face = detector.detect(image)
    square = fit_inside(face.square(), height, width) if face else centre_square(height, width)
    return FramedImage(crop_square(image, square, size), square, face is not None)


class DrivingFramer:
    """The webcam crop: placed around the face at calibration, then following it smoothly.

    dead_zone: how far (fraction of the crop side) the face may move from the
    crop's centre before the crop follows.  zoom (> 1 zooms in) and offset
    (fractions of the crop side, +x right, +y down) are the manual adjustments.
    """

    def __init__(self, detector: FaceDetector, size: int, dead_zone: float = 0.12,
                 follow: OneEuroFilter | None = None):
        self.detector = detector
        self.size = size
        self.dead_zone = dead_zone
        self.follow = follow or OneEuroFilter(min_cutoff=0.3, beta=0.001)
        self.zoom = 1.0
        self.offset = (0.0, 0.0)
        self._anchor: Square | None = None
        self._turn = -1  # which of the other covering squares was searched last (see detect)

    @property
    def anchored(self) -> bool:
        """Whether a face has been seen: a frame without one then keeps the crop where it was."""
        return self._anchor is not None

    def calibrate(self, frame: np.ndarray, time: float) -> bool:
        """Place the crop around the face in ``frame``; returns whether a face was found."""
        face = self.detect(frame, everywhere=True)
        if face is None:
            return False
        self._anchor = face.square()
        self.follow.reset(np.array([self._anchor.cx, self._anchor.cy]), time)
        return True

    def __call__(self, frame: np.ndarray, time: float) -> FramedImage:
        """Crop one webcam frame (HxWx3 uint8 RGB) at ``time`` seconds."""
        height, width = frame.shape[:2]
        face = self.detect(frame)
        if self._anchor is None:
            if face is None:
                centre = centre_square(height, width)
                return FramedImage(crop_square(frame, centre, self.size), centre, False)
            self._anchor = face.square()
            self.follow.reset(np.array([self._anchor.cx, self._anchor.cy]), time)
        if face is not None:
            self._anchor = self._followed(face.square(), time)
        side = self._anchor.size / self.zoom
        square = Square(self._anchor.cx + self.offset[0] * side, self._anchor.cy + self.offset[1] * side, side)
        return FramedImage(crop_square(frame, square, self.size), square, face is not None)

    def detect(self, frame: np.ndarray, everywhere: bool = False) -> Face | None:
        """The face in the largest square of ``frame`` around the crop (the frame's centre before any face), else in
        one of the other largest squares that cover the frame, a different one each frame (a face that appears
        elsewhere is found within a few frames, and a frame without a face costs two detections); everywhere:
        search all of them (calibration).  The short-range detector reads a square image: on a whole 16:9 webcam
        frame its scores for a face filling half the height fell to 0.3-0.7 (a quarter of the frames missed at
        0.5), against 0.93-0.97 on a square around it."""
        height, width = frame.shape[:2]
        around = self._anchor or centre_square(height, width)
        first = fit_inside(Square(around.cx, around.cy, min(height, width)), height, width)
        others = sorted((square for square in covering_squares(height, width) if square != first),
                        key=lambda square: abs(square.cx - first.cx) + abs(square.cy - first.cy))
        if not everywhere and others:
            self._turn = (self._turn + 1) % len(others)
            others = [others[self._turn]]
        for window in (first, *others):
            face = self._detect_in(frame, window)
            if face is not None:
                return face
        return None

    def _detect_in(self, frame: np.ndarray, window: Square) -> Face | None:
        """The face in ``window`` of ``frame`` (frame coordinates); a face cut by the window's edge is detected again
        in the square centred on it (cut, it came back 13% smaller and 12 pixels off)."""
        height, width = frame.shape[:2]
        x0, y0, x1, y1 = window.corners()
        face = self.detector.detect(frame[y0:y1, x0:x1])
        if face is None:
            return None
        face = face.shifted(x0, y0)
        cut = (face.x <= x0 + EDGE_PX or face.y <= y0 + EDGE_PX or face.x + face.width >= x1 - EDGE_PX
               or face.y + face.height >= y1 - EDGE_PX)
        if not cut:
            return face
        centred = fit_inside(Square(face.x + face.width / 2, face.y + face.height / 2, min(height, width)), height,
                             width).corners()
        if centred == (x0, y0, x1, y1):  # the frame's own edge: nothing more to see
            return face
        cx0, cy0, cx1, cy1 = centred
        again = self.detector.detect(frame[cy0:cy1, cx0:cx1])
        return face if again is None else again.shifted(cx0, cy0)

    def _followed(self, target: Square, time: float) -> Square:
        """Move the anchor just enough to bring the face back inside the dead zone, smoothly."""
        centre = np.array([self._anchor.cx, self._anchor.cy])
        reach = self.dead_zone * self._anchor.size
        offset = np.array([target.cx, target.cy]) - centre
        wanted = centre + np.sign(offset) * np.maximum(np.abs(offset) - reach, 0.0)
        smoothed = self.follow(wanted, time)
        return Square(float(smoothed[0]), float(smoothed[1]), self._anchor.size)

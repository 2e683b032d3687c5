"""Animator: drives one avatar with a stream of driving frames, frame by frame."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .generator import SourceState
from .images import image_to_tensor, tensor_to_image
from .model import FirstOrderModel
from .motion import Keypoints, MotionReference, make_motion_reference, smooth_keypoints, transfer_motion


class Animator:
    """Animate ``source_image`` with the motion of driving frames.

    Images are HxWx3 RGB numpy arrays of the model's frame size (256x256 for
    the released models): uint8 in gives uint8 out, float32 in [0, 1] gives
    float32 in [0, 1] out.

    relative: move the avatar by the driving person's motion since the
    reference frame (True), or copy the driving keypoints as they are (False).
    adapt_scale: scale relative motion by the ratio of the avatar's and the
    reference's keypoint spreads (convex hull areas).
    movement: a further factor on relative motion (1 = unchanged).
    smoothing: exponential smoothing of the driving keypoints over frames,
    in [0, 1) (0 = none; 0.5 averages each frame half with the past).

    The reference is the frame passed to :meth:`calibrate`, or the first
    driving frame if it was never called.  Everything that depends only on
    the avatar and the reference is computed when they (or the settings)
    change; a call renders one frame with the keypoint detector on the
    driving frame and the generator's per-frame part, nothing else.  With the
    default movement and smoothing the output is the original FOMM's for the
    same frames and options.  All four settings may be changed at any time.
    """

    def __init__(self, model: FirstOrderModel, source_image: np.ndarray, relative: bool = True,
                 adapt_scale: bool = True, movement: float = 1.0, smoothing: float = 0.0):
        self.model = model
        self.relative = relative
        self._adapt_scale = adapt_scale
        self._movement = movement
        self.smoothing = smoothing
        self._source: Optional[SourceState] = None
        self._reference: Optional[Keypoints] = None
        self._motion: Optional[MotionReference] = None
        self._previous: Optional[Keypoints] = None
        self.set_source(source_image)

    @property
    def adapt_scale(self) -> bool:
        return self._adapt_scale

    @adapt_scale.setter
    def adapt_scale(self, value: bool) -> None:
        self._adapt_scale = value
        self._update_motion_reference()

    @property
    def movement(self) -> float:
        return self._movement

    @movement.setter
    def movement(self, value: float) -> None:
        self._movement = value
        self._update_motion_reference()

    @property
    def smoothing(self) -> float:
        return self._smoothing

    @smoothing.setter
    def smoothing(self, value: float) -> None:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {value}")
        self._smoothing = value

    def set_source(self, source_image: np.ndarray) -> None:
        """Change the avatar: re-encodes the source only (the reference pose is kept)."""
        tensor = image_to_tensor(source_image, self.model.frame_size, self.model.device, "source image")
        self._source = self.model.encode_source(tensor)
        self._update_motion_reference()

    def calibrate(self, driving_frame: np.ndarray) -> None:
        """Take this driving frame as the reference (neutral) pose.  May be called at any time."""
        tensor = image_to_tensor(driving_frame, self.model.frame_size, self.model.device, "calibration frame")
        self._previous = None
        self._set_reference(self.model.detect_keypoints(tensor))

    @property
    def calibrated(self) -> bool:
        """Whether a reference pose is set."""
        return self._reference is not None

    def __call__(self, driving_frame: np.ndarray) -> np.ndarray:
        """One driving frame -> one animated frame (same dtype and shape)."""
        return self.render(self.detect(driving_frame), driving_frame.dtype)

    def detect(self, driving_frame: np.ndarray) -> Keypoints:
        """First half of a call: the driving frame's keypoints (the first frame ever becomes the reference)."""
        tensor = image_to_tensor(driving_frame, self.model.frame_size, self.model.device, "driving frame")
        driving = self.model.detect_keypoints(tensor)
        if self._reference is None:
            self._set_reference(driving)
        return driving

    def render(self, driving: Keypoints, dtype: type | np.dtype = np.uint8) -> np.ndarray:
        """Second half of a call: the avatar posed by these driving keypoints, HxWx3 of ``dtype`` (uint8 or float32)."""
        with torch.inference_mode():
            if self._smoothing > 0 and self._previous is not None:
                driving = smooth_keypoints(self._previous, driving, self._smoothing)
            self._previous = driving
            transferred = transfer_motion(driving, self._motion, self.relative)
        return tensor_to_image(self.model.render(self._source, transferred), dtype)

    def _set_reference(self, reference: Keypoints) -> None:
        self._reference = reference
        self._update_motion_reference()

    def _update_motion_reference(self) -> None:
        if self._reference is None or self._source is None:
            return
        with torch.inference_mode():
            self._motion = make_motion_reference(self._source.motion.keypoints, self._reference, self._adapt_scale,
                                                 self._movement)

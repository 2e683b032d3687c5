"""Animating one avatar from a stream of driving frames, in two halves that can run on different machines.

:class:`MotionDriver` is the driving side: the keypoint detector on each
driving frame, the reference (neutral) pose, and the transfer of the driving
motion onto the avatar's keypoints (relative or absolute, adapt scale,
movement, smoothing).  :class:`SourceRenderer` is the rendering side: the
avatar encoded once, then one generator step per frame from the transferred
keypoints.  Only keypoints pass between them (a few hundred bytes a frame),
which is what lets the render run on a server while the camera image stays on
the user's machine.  :class:`Animator` joins the two for one process.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .generator import SourceState
from .images import image_to_tensor, tensor_to_image
from .model import FirstOrderModel
from .motion import Keypoints, MotionReference, make_motion_reference, smooth_keypoints, transfer_motion


def keypoints_of(model: FirstOrderModel, image: np.ndarray, what: str) -> Keypoints:
    """The keypoints of one image (HxWx3 uint8, or float32 in [0, 1], at the model's frame size; ``what`` names it
    in errors): 1xKx2 float32 in [-1, 1] and 1xKx2x2, on the model's device."""
    return model.detect_keypoints(image_to_tensor(image, model.frame_size, model.device, what))


class MotionDriver:
    """Driving keypoints, transferred onto the avatar's.

    relative: move the avatar by the driving person's motion since the
    reference frame (True), or copy the driving keypoints as they are (False).
    adapt_scale: scale relative motion by the ratio of the avatar's and the
    reference's keypoint spreads (convex hull areas).
    movement: a further factor on relative motion (1 = unchanged).
    smoothing: exponential smoothing of the driving keypoints over frames,
    in [0, 1) (0 = none; 0.5 averages each frame half with the past).

    The reference is the frame passed to :meth:`calibrate`, or the first
    driving frame if it was never called.  What depends only on the avatar's
    keypoints and the reference is computed when they (or the settings)
    change; per frame only the keypoint detector and the transfer run.
    Keypoints are the model's float32 tensors (batch 1) on its device.
    """

    def __init__(self, model: FirstOrderModel, relative: bool = True, adapt_scale: bool = True,
                 movement: float = 1.0, smoothing: float = 0.0):
        self.model = model
        self.relative = relative
        self._adapt_scale = adapt_scale
        self._movement = movement
        self.smoothing = smoothing
        self._source: Optional[Keypoints] = None
        self._reference: Optional[Keypoints] = None
        self._motion: Optional[MotionReference] = None
        self._previous: Optional[Keypoints] = None

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

    @property
    def calibrated(self) -> bool:
        """Whether a reference pose is set."""
        return self._reference is not None

    def set_source_keypoints(self, keypoints: Keypoints) -> None:
        """The avatar's keypoints (1xKx2 in [-1, 1], 1xKx2x2), which the driving motion is transferred onto."""
        self._source = keypoints
        self._update_motion_reference()

    def calibrate(self, driving_frame: np.ndarray) -> None:
        """Take this driving frame (HxWx3 at the model's frame size) as the reference pose.  May be called at any time."""
        self._previous = None
        self._set_reference(keypoints_of(self.model, driving_frame, "calibration frame"))

    def detect(self, driving_frame: np.ndarray) -> Keypoints:
        """The driving frame's keypoints (the first frame ever becomes the reference)."""
        driving = keypoints_of(self.model, driving_frame, "driving frame")
        if self._reference is None:
            self._set_reference(driving)
        return driving

    def transfer(self, driving: Keypoints) -> Keypoints:
        """Driving keypoints (after :meth:`detect`) -> the avatar's keypoints for this frame, smoothed and moved."""
        if self._motion is None:
            raise RuntimeError("transfer needs the avatar's keypoints (set_source_keypoints) and a reference pose")
        with torch.inference_mode():
            if self._smoothing > 0 and self._previous is not None:
                driving = smooth_keypoints(self._previous, driving, self._smoothing)
            self._previous = driving
            return transfer_motion(driving, self._motion, self.relative)

    def _set_reference(self, reference: Keypoints) -> None:
        self._reference = reference
        self._update_motion_reference()

    def _update_motion_reference(self) -> None:
        if self._reference is None or self._source is None:
            return
        with torch.inference_mode():
            self._motion = make_motion_reference(self._source, self._reference, self._adapt_scale, self._movement)


class SourceRenderer:
    """The avatar, encoded once, rendered in the pose of transferred keypoints: the generator's side."""

    def __init__(self, model: FirstOrderModel):
        self.model = model
        self._source: Optional[SourceState] = None

    def set_source(self, source_image: np.ndarray) -> Keypoints:
        """Encode an avatar (HxWx3 uint8, or float32 in [0, 1], at the model's frame size); returns its keypoints."""
        tensor = image_to_tensor(source_image, self.model.frame_size, self.model.device, "source image")
        self._source = self.model.encode_source(tensor)
        return self._source.motion.keypoints

    def render(self, keypoints: Keypoints, dtype: type | np.dtype = np.uint8) -> np.ndarray:
        """The avatar posed by transferred keypoints: HxWx3 of ``dtype`` (uint8, or float32 in [0, 1])."""
        if self._source is None:
            raise RuntimeError("render needs an avatar: call set_source first")
        return tensor_to_image(self.model.render(self._source, keypoints), dtype)


class Animator:
    """Animate ``source_image`` with the motion of driving frames, in one process.

    Images are HxWx3 RGB numpy arrays of the model's frame size (256x256 for
    the released models): uint8 in gives uint8 out, float32 in [0, 1] gives
    float32 in [0, 1] out.  relative, adapt_scale, movement and smoothing are
    :class:`MotionDriver`'s, and may be changed at any time.  A call renders
    one frame with the keypoint detector on the driving frame and the
    generator's per-frame part, nothing else.  With the default movement and
    smoothing the output is the original FOMM's for the same frames and options.
    """

    def __init__(self, model: FirstOrderModel, source_image: np.ndarray, relative: bool = True,
                 adapt_scale: bool = True, movement: float = 1.0, smoothing: float = 0.0):
        self.driver = MotionDriver(model, relative, adapt_scale, movement, smoothing)
        self.renderer = SourceRenderer(model)
        self.set_source(source_image)

    relative = property(lambda self: self.driver.relative, lambda self, value: setattr(self.driver, "relative", value))
    adapt_scale = property(lambda self: self.driver.adapt_scale,
                           lambda self, value: setattr(self.driver, "adapt_scale", value))
    movement = property(lambda self: self.driver.movement, lambda self, value: setattr(self.driver, "movement", value))
    smoothing = property(lambda self: self.driver.smoothing,
                         lambda self, value: setattr(self.driver, "smoothing", value))

    @property
    def calibrated(self) -> bool:
        return self.driver.calibrated

    def set_source(self, source_image: np.ndarray) -> None:
        """Change the avatar: re-encodes the source only (the reference pose is kept)."""
        self.driver.set_source_keypoints(self.renderer.set_source(source_image))

    def calibrate(self, driving_frame: np.ndarray) -> None:
        """Take this driving frame as the reference (neutral) pose.  May be called at any time."""
        self.driver.calibrate(driving_frame)

    def __call__(self, driving_frame: np.ndarray) -> np.ndarray:
        """One driving frame -> one animated frame (same dtype and shape)."""
        return self.render(self.detect(driving_frame), driving_frame.dtype)

    def detect(self, driving_frame: np.ndarray) -> Keypoints:
        """First half of a call: the driving frame's keypoints (the first frame ever becomes the reference)."""
        return self.driver.detect(driving_frame)

    def render(self, driving: Keypoints, dtype: type | np.dtype = np.uint8) -> np.ndarray:
        """Second half of a call: the avatar posed by these driving keypoints, HxWx3 of ``dtype`` (uint8 or float32)."""
        return self.renderer.render(self.driver.transfer(driving), dtype)

"""The motion stage: keypoints of the framed camera crop, moved onto the avatar's (engine.MotionDriver)."""

from __future__ import annotations

import numpy as np

from engine import EngineError, FirstOrderModel, Keypoints
from engine.animator import MotionDriver

from ..hotkeys import LiveState
from ..status import StatusBoard


class MotionStage:
    """Follows the live settings (relative, movement, smoothing) and the reference pose; adapt_scale is fixed."""

    def __init__(self, model: FirstOrderModel, status: StatusBoard, adapt_scale: bool = True):
        self.driver = MotionDriver(model, adapt_scale=adapt_scale)
        self.status = status

    def set_avatar(self, keypoints: Keypoints) -> None:
        """The avatar's keypoints (1xKx2, 1xKx2x2 float32), from the render stage that encoded it."""
        self.driver.set_source_keypoints(keypoints)

    def follow(self, state: LiveState) -> None:
        driver = self.driver
        driver.relative = state.relative
        if driver.movement != state.movement:
            driver.movement = state.movement
        driver.smoothing = state.smoothing

    def calibrate(self, crop: np.ndarray, message: str) -> None:
        """Take the pose in ``crop`` (the framed camera crop) as the neutral one, saying ``message`` when done."""
        try:
            self.driver.calibrate(crop)
        except EngineError as error:
            self.status.event(f"calibration failed: {error}")
            return
        self.status.event(message)

    def __call__(self, crop: np.ndarray) -> Keypoints:
        """The avatar's keypoints for this camera crop: the driving motion transferred (1xKx2, 1xKx2x2 float32)."""
        return self.driver.transfer(self.driver.detect(crop))

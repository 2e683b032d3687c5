"""The render stage: the avatar in the pose of the transferred keypoints.

Every render stage offers the same three calls, so the processor never
knows where rendering happens: :class:`LocalRender` runs the generator in
this process; :class:`live.stages.remote_render.RemoteRender` asks a server.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from engine import FirstOrderModel, Keypoints
from engine.animator import SourceRenderer


class RenderStage(Protocol):
    def set_avatar(self, crop: np.ndarray) -> Keypoints:
        """Take a new avatar (side x side x 3 uint8 RGB); returns its keypoints (1xKx2, 1xKx2x2 float32)."""

    def render(self, keypoints: Keypoints) -> np.ndarray | None:
        """The avatar posed by transferred keypoints, side x side x 3 uint8 RGB; None when no new frame is ready
        (the caller holds the last one)."""

    def timings(self) -> dict[str, float]:
        """Milliseconds of the last render, by part (for the HUD)."""

    def dropped(self) -> int:
        """Frames or keypoints dropped on the way (a remote link's newest-wins), for the HUD."""

    def close(self) -> None: ...


class LocalRender:
    """The generator in this process (on the model's backend)."""

    def __init__(self, model: FirstOrderModel):
        self._renderer = SourceRenderer(model)
        self._milliseconds = 0.0

    def set_avatar(self, crop: np.ndarray) -> Keypoints:
        return self._renderer.set_source(crop)

    def render(self, keypoints: Keypoints) -> np.ndarray:
        start = time.perf_counter()
        frame = self._renderer.render(keypoints)
        self._milliseconds = (time.perf_counter() - start) * 1e3
        return frame

    def timings(self) -> dict[str, float]:
        return {"render": self._milliseconds}

    def dropped(self) -> int:
        return 0

    def close(self) -> None:
        pass

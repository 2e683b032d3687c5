"""The pose search stage (key F): the camera crop whose face pose best matches the avatar's."""

from __future__ import annotations

import numpy as np

from ..pose_match import BestReferenceSearch, FaceLandmarks
from ..status import StatusBoard


class PoseSearchStage:
    """Started and finished by the same key; while running, every framed crop is offered to it."""

    def __init__(self, status: StatusBoard):
        self.status = status
        self._landmarks: FaceLandmarks | None = None
        self._search: BestReferenceSearch | None = None

    @property
    def running(self) -> bool:
        return self._search is not None

    def start(self, avatar_crop: np.ndarray) -> None:
        """Begin looking for the avatar's pose; says why not when the avatar shows no face landmarks."""
        if self._landmarks is None:
            self._landmarks = FaceLandmarks(static_images=False)
        avatar_landmarks = FaceLandmarks(static_images=True)
        try:
            target = avatar_landmarks(avatar_crop)
        finally:
            avatar_landmarks.close()
        if target is None:
            self.status.event("pose search: no face landmarks in the avatar; press X to calibrate by hand")
            return
        self._search = BestReferenceSearch(target)
        self.status.event("pose search: move your head slowly; press F again to use the best match")

    def offer(self, crop: np.ndarray) -> None:
        if self._search is not None:
            self._search.offer(crop, self._landmarks(crop))

    def finish(self) -> tuple[np.ndarray, float] | None:
        """End the search: the best crop and its pose distance, or None if no face was seen."""
        search, self._search = self._search, None
        if search is None or search.best_frame is None:
            self.status.event("pose search: no face seen, reference unchanged")
            return None
        return search.best_frame, search.best_distance

    def cancel(self) -> None:
        self._search = None

    def close(self) -> None:
        if self._landmarks is not None:
            self._landmarks.close()

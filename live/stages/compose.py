"""The compose stage: the animated square made into the output frame, and the preview's camera inset."""

from __future__ import annotations

import cv2
import numpy as np

from ..avatars import Avatar
from ..hotkeys import LiveState
from ..pasteback import PasteBack, cover


class Composer:
    """output_size: (width, height) of the output; square: the bare animated square resized to it, instead of
    the face blended back into the whole avatar picture."""

    def __init__(self, output_size: tuple[int, int], square: bool = False):
        self.output_size = output_size
        self.square = square
        self._avatar: Avatar | None = None
        self._paste_back: PasteBack | None = None

    def set_avatar(self, avatar: Avatar) -> None:
        width, height = self.output_size
        self._avatar = avatar
        self._paste_back = None if self.square else PasteBack(avatar.photo, avatar.framed.square, width, height)

    def output(self, animated: np.ndarray) -> np.ndarray:
        """The animated square (side x side x 3 uint8 RGB) -> the output frame (height x width x 3 uint8 RGB)."""
        if self.square:
            width, height = self.output_size
            return cv2.resize(animated, (width, height), interpolation=cv2.INTER_LINEAR)
        return self._paste_back(animated)

    def passthrough(self, camera_frame: np.ndarray) -> np.ndarray:
        """The real camera at the output size (key P)."""
        width, height = self.output_size
        return cover(camera_frame, width, height)

    def inset(self, crop: np.ndarray, state: LiveState) -> np.ndarray:
        """The framed camera crop, with the avatar overlaid at the overlay opacity (keys Z and C)."""
        if state.overlay <= 0 or self._avatar is None:
            return crop
        return cv2.addWeighted(self._avatar.framed.crop, state.overlay, crop, 1 - state.overlay, 0)

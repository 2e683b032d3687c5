"""The preview window (OpenCV): shows the output with the HUD and reads the keys."""

from __future__ import annotations

import os
import platform

import cv2
import numpy as np

from .sinks import SinkError

ESC_CODE = 27


class PreviewWindow:
    def __init__(self, title: str = "fomm-live"):
        if platform.system() == "Linux" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise SinkError("no display for the preview window (DISPLAY is unset): run with --no-preview")
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)  # no toolbar

    def show(self, frame: np.ndarray) -> None:
        """Show an HxWx3 uint8 RGB frame."""
        cv2.imshow(self.title, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def poll_keys(self, milliseconds: int) -> list[int]:
        """The keys pressed since the last call, waiting up to ``milliseconds`` for the first; closing the window
        counts as Esc."""
        keys = []
        key = cv2.waitKey(milliseconds)
        while key != -1 and len(keys) < 16:
            keys.append(key)
            key = cv2.waitKey(1)
        if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            keys.append(ESC_CODE)
        return keys

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)

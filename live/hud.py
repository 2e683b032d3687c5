"""Text drawn over frames: the HUD (FPS, per-stage milliseconds, settings), messages and the help overlay."""

from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_lines(frame: np.ndarray, lines: list[str], origin: tuple[int, int], scale: float = 0.5,
               colour: tuple[int, int, int] = (255, 255, 255), panel: bool = True) -> None:
    """Draw text lines in place, top-left at ``origin``, on a dark translucent panel."""
    if not lines:
        return
    height = int(22 * scale / 0.5)
    x, y = origin
    if panel:
        width = max(cv2.getTextSize(line, FONT, scale, 1)[0][0] for line in lines) + 12
        x1, y1 = min(frame.shape[1], x + width), min(frame.shape[0], y + height * len(lines) + 8)
        frame[y:y1, x:x1] = (frame[y:y1, x:x1] * 0.35).astype(np.uint8)
    for index, line in enumerate(lines):
        position = (x + 6, y + height * (index + 1))
        cv2.putText(frame, line, position, FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(frame, line, position, FONT, scale, colour, 1, cv2.LINE_AA)


def draw_message(frame: np.ndarray, text: str) -> None:
    """A warning across the bottom of the frame (e.g. "camera lost: reconnecting")."""
    scale = max(0.5, frame.shape[1] / 1600)
    size = cv2.getTextSize(text, FONT, scale, 2)[0]
    origin = (max(0, (frame.shape[1] - size[0]) // 2 - 6), frame.shape[0] - size[1] - 30)
    draw_lines(frame, [text], origin, scale, colour=(255, 220, 80))

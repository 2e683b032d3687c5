"""Paste-back: the animated face blended into the full avatar picture at the output size.

Call apps want a full frame (1280x720 by default), not a 256x256 square.  The
whole avatar photo is fitted into the output frame (the space beside it filled
with a blurred, enlarged copy of itself), and each animated face square is
resized to where its crop came from and blended in through a feathered mask.
Everything but the per-frame resize and blend is computed once per avatar.
"""

from __future__ import annotations

import cv2
import numpy as np

from .framing import Square


def feathered_mask(side: int, feather: float) -> np.ndarray:
    """side x side x 1 float32 weights: 1 inside, easing (smoothstep) to 0 over the outer ``feather`` of the side."""
    ramp = max(1.0, feather * side)
    distance = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float32)
    edge = np.clip(np.minimum(distance[:, None], distance[None, :]) / ramp, 0.0, 1.0)
    return (edge * edge * (3 - 2 * edge))[..., None]


def cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to fill width x height, the overflow cropped equally on both sides (cheap: one resize)."""
    rows, cols = image.shape[:2]
    scale = max(width / cols, height / rows)
    crop_w, crop_h = min(cols, round(width / scale)), min(rows, round(height / scale))
    x, y = (cols - crop_w) // 2, (rows - crop_h) // 2
    return cv2.resize(image[y:y + crop_h, x:x + crop_w], (width, height), interpolation=cv2.INTER_LINEAR)


def fit_canvas(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """``image`` scaled to fit width x height, centred on a blurred, scaled-to-fill copy of itself.

    Returns the canvas (height x width x 3 uint8), the scale and the (x, y) of the image's top-left corner.
    """
    rows, cols = image.shape[:2]
    fill = max(width / cols, height / rows)
    background = cv2.resize(image, (max(width, round(cols * fill)), max(height, round(rows * fill))))
    top, left = (background.shape[0] - height) // 2, (background.shape[1] - width) // 2
    background = background[top:top + height, left:left + width]
    canvas = cv2.GaussianBlur(background, (0, 0), sigmaX=max(width, height) / 60)
    canvas = (canvas * 0.6).astype(np.uint8)
    scale = min(width / cols, height / rows)
    placed = cv2.resize(image, (round(cols * scale), round(rows * scale)), interpolation=cv2.INTER_AREA)
    x, y = (width - placed.shape[1]) // 2, (height - placed.shape[0]) // 2
    canvas[y:y + placed.shape[0], x:x + placed.shape[1]] = placed
    return canvas, scale, (x, y)


class PasteBack:
    """Composes output frames for one avatar.  avatar: HxWx3 uint8 RGB photo; face: where its crop was taken."""

    def __init__(self, avatar: np.ndarray, face: Square, width: int, height: int, feather: float = 0.15):
        self.canvas, scale, (x, y) = fit_canvas(avatar, width, height)
        self.square = Square(x + face.cx * scale, y + face.cy * scale, face.size * scale)
        x0, y0, x1, y1 = self.square.corners()
        side = x1 - x0
        mask = feathered_mask(side, feather)
        # The part of the face square that lies on the canvas.
        self._canvas_region = (slice(max(y0, 0), min(y1, height)), slice(max(x0, 0), min(x1, width)))
        self._face_region = (slice(max(y0, 0) - y0, min(y1, height) - y0), slice(max(x0, 0) - x0, min(x1, width) - x0))
        self._side = side
        # One weight map per side of the blend (HxW float32, summing to 1), for cv2.blendLinear: a single SIMD pass
        # from uint8 to uint8 (measured 1.3 against 3.4 ms in numpy float32 for a 420-pixel face, 1 level apart).
        self._face_weight = np.ascontiguousarray(mask[self._face_region][..., 0])
        self._canvas_weight = 1.0 - self._face_weight
        self._behind_face = np.ascontiguousarray(self.canvas[self._canvas_region])

    def __call__(self, face: np.ndarray) -> np.ndarray:
        """An animated face (SxSx3 uint8 RGB, any S) -> the full output frame (height x width x 3 uint8)."""
        resized = cv2.resize(face, (self._side, self._side), interpolation=cv2.INTER_LINEAR)[self._face_region]
        out = self.canvas.copy()
        out[self._canvas_region] = cv2.blendLinear(np.ascontiguousarray(resized), self._behind_face,
                                                   self._face_weight, self._canvas_weight)
        return out

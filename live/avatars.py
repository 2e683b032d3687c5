"""Avatars: one image or a folder of them, framed for the model and ready for paste-back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .framing import FaceDetector, FramedImage, frame_avatar

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class AvatarError(ValueError):
    """The avatar path holds no usable image."""


@dataclass(frozen=True)
class Avatar:
    """name: file name; photo: the whole picture (HxWx3 uint8 RGB); framed: its face-centred model-size crop."""

    name: str
    photo: np.ndarray
    framed: FramedImage


class AvatarLibrary:
    """The avatar images under ``path`` (an image, or a folder read in name order)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files = self.scan()

    def scan(self) -> list[Path]:
        """List the images again (the folder may have changed); raises :class:`AvatarError` if there are none."""
        if self.path.is_file():
            files = [self.path]
        elif self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise AvatarError(f"no avatar images in {self.path} (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
        else:
            raise AvatarError(f"avatar not found: {self.path} (expected an image or a folder of images)")
        self.files = files
        return files

    def __len__(self) -> int:
        return len(self.files)

    def check_first(self) -> None:
        """Decode the avatar a run starts with (the first in name order), so that a file that is no image is refused
        before the model loads; raises :class:`AvatarError` as :meth:`load` does. The others are read when switched
        to."""
        self.read(0)

    def read(self, index: int) -> np.ndarray:
        """The whole picture of avatar ``index`` (0-based) as HxWx3 uint8 RGB; raises :class:`AvatarError` if it is
        missing or unreadable."""
        if not 0 <= index < len(self.files):
            raise AvatarError(f"no avatar {index + 1}: {self.path} holds {len(self.files)}")
        path = self.files[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise AvatarError(f"cannot read avatar image {path} (not an image, or a format OpenCV cannot decode)")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def load(self, index: int, detector: FaceDetector, size: int) -> Avatar:
        """Avatar ``index`` (0-based), read and framed; raises :class:`AvatarError` if it is missing or unreadable."""
        photo = self.read(index)
        return Avatar(self.files[index].name, photo, frame_avatar(photo, detector, size))

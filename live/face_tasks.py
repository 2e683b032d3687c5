"""What the face detector and the face mesh share: mediapipe's Tasks API, fed from the models shipped in the package.

Nothing is downloaded: the models lie in live/face_models/ (see its README.md for where they come from).
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  (see the last line)
import io
import threading
import weakref
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np

FACE_MODELS = Path(__file__).resolve().parent / "face_models"
SHORT_RANGE_MODEL = "face_detection_short_range.tflite"  # faces within about 2 m: webcams
FULL_RANGE_MODEL = "face_detection_full_range_sparse.tflite"  # faces up to about 5 m: photos
LANDMARKER_MODEL = "face_landmarks_detector.tflite"  # the 468-landmark mesh, adapted by build_face_models.py
BUNDLE_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the bundle's bytes depend on the models only


def face_model(name: str) -> bytes:
    """The bytes of one of the face models shipped in live/face_models/."""
    path = FACE_MODELS / name
    if not path.is_file():
        raise FileNotFoundError(f"face model {path} is missing: fomm-live was installed without its package data; "
                                'reinstall it with pip install -e ".[dev]" from the repository root')
    return path.read_bytes()


def landmarker_bundle() -> bytes:
    """The .task zip the Tasks FaceLandmarker loads: the short-range detector and the mesh, assembled here from
    the shipped models (the detector is not shipped twice)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for member, name in (("face_detector.tflite", SHORT_RANGE_MODEL),
                             ("face_landmarks_detector.tflite", LANDMARKER_MODEL)):
            archive.writestr(zipfile.ZipInfo(member, date_time=BUNDLE_DATE), face_model(name))
    return out.getvalue()


def mediapipe_image(image: np.ndarray):
    """An HxWx3 uint8 RGB array as a mediapipe Image (raises ValueError, saying what was found, for anything else)."""
    import mediapipe as mp

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, found shape {image.shape} dtype {image.dtype}")
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))


class Closable(Protocol):
    def close(self) -> None: ...


_open_tasks: weakref.WeakSet = weakref.WeakSet()


def close_when_python_exits(task: Closable) -> None:
    """Close ``task`` (if still open) before Python stops its threads.

    mediapipe runs each task's calls on a worker thread.  A task still open when the interpreter exits is
    closed by mediapipe's own __del__ after those threads are gone, which prints tracebacks; an atexit hook
    runs too late as well.  Python's thread-shutdown hooks run first.
    """
    _open_tasks.add(task)


def _close_open_tasks() -> None:
    for task in list(_open_tasks):
        task.close()


# Registered after concurrent.futures' own hook (imported here for that: it loads lazily), so it runs before it.
getattr(threading, "_register_atexit", atexit.register)(_close_open_tasks)

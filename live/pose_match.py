"""Finding the webcam frame whose face pose best matches the avatar's (the F hotkey).

Relative motion renders the avatar as it is when the driving face is in its
reference pose; the closer that pose is to the avatar's own, the less the
avatar is distorted.  While a search runs, each driving crop's face-mesh
landmarks are compared with the avatar's, and the closest frame is kept.
"""

from __future__ import annotations

import numpy as np

from .face_tasks import close_when_python_exits, landmarker_bundle, mediapipe_image

MESH_LANDMARKS = 468  # the bundle appends 10 copies for the Tasks graph's 478 slots: dropped
# Video mode's clock: one frame at 30 fps per call.  A fixed step keeps results independent of the wall clock;
# mediapipe smooths the landmarks of calls a millisecond apart, and passes them through at 33 ms.
FRAME_MS = 33


class FaceLandmarks:
    """mediapipe's face mesh (468 landmarks) through its Tasks FaceLandmarker, from the bundle in live/face_models/.

    static_images: every image is searched for a face on its own (the avatar);
    else the face is tracked from one call to the next (video mode, the webcam).
    """

    def __init__(self, static_images: bool):
        from mediapipe.tasks.python import BaseOptions, vision

        mode = vision.RunningMode.IMAGE if static_images else vision.RunningMode.VIDEO
        options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_buffer=landmarker_bundle()),
                                               running_mode=mode, num_faces=1)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        close_when_python_exits(self)
        self._static = static_images
        self._timestamp_ms = 0

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """468x2 float64 landmark positions of the face in an HxWx3 uint8 RGB image, in [0, 1] image units, or None."""
        frame = mediapipe_image(image)
        if self._static:
            result = self._landmarker.detect(frame)
        else:
            self._timestamp_ms += FRAME_MS
            result = self._landmarker.detect_for_video(frame, self._timestamp_ms)
        if not result.face_landmarks:
            return None
        return np.array([(p.x, p.y) for p in result.face_landmarks[0][:MESH_LANDMARKS]], dtype=np.float64)

    def close(self) -> None:
        self._landmarker.close()


def normalised(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks with their centroid at 0 and unit RMS distance from it (pose without position or size)."""
    centred = landmarks - landmarks.mean(axis=0)
    return centred / np.sqrt((centred**2).sum(axis=1).mean())


def pose_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared distance between two normalised landmark sets (0 = same pose)."""
    return float(((normalised(a) - normalised(b)) ** 2).sum(axis=1).mean())


class BestReferenceSearch:
    """Keeps the driving crop closest in pose to the avatar among those offered."""

    def __init__(self, avatar_landmarks: np.ndarray):
        self.avatar_landmarks = avatar_landmarks
        self.best_frame: np.ndarray | None = None
        self.best_distance = float("inf")

    def offer(self, crop: np.ndarray, landmarks: np.ndarray | None) -> None:
        if landmarks is None:
            return
        distance = pose_distance(self.avatar_landmarks, landmarks)
        if distance < self.best_distance:
            self.best_frame, self.best_distance = crop.copy(), distance

"""Finding the webcam frame whose face pose best matches the avatar's (the F hotkey).

Relative motion renders the avatar as it is when the driving face is in its
reference pose; the closer that pose is to the avatar's own, the less the
avatar is distorted.  While a search runs, each driving crop's face-mesh
landmarks are compared with the avatar's, and the closest frame is kept.
"""

from __future__ import annotations

import numpy as np


class FaceLandmarks:
    """mediapipe's face mesh (468 landmarks; the model ships inside the 0.10.21 wheel)."""

    def __init__(self, static_images: bool):
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=static_images, max_num_faces=1)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """Nx2 landmark positions of the face in an RGB uint8 image, in [0, 1] image units; None without a face."""
        result = self._mesh.process(image)
        if not result.multi_face_landmarks:
            return None
        return np.array([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)

    def close(self) -> None:
        self._mesh.close()


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

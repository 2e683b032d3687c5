"""The face models shipped in live/face_models/: what they are, that mediapipe's Tasks API runs them, and --doctor.

Needs numpy, OpenCV and mediapipe but not torch (except the doctor tests), so that it also runs on a Python
for which no CPU build of torch is at hand: `pytest --noconftest tests/test_face_models.py`.
"""

from __future__ import annotations

import hashlib
import io
import importlib.metadata
import platform
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from live import face_tasks
from live.face_tasks import FACE_MODELS, FULL_RANGE_MODEL, LANDMARKER_MODEL, SHORT_RANGE_MODEL
from live.framing import FaceDetector
from live.pose_match import MESH_LANDMARKS, BestReferenceSearch, FaceLandmarks

ASTRONAUT = Path(__file__).parent / "fixtures" / "fomm-parity-small" / "inputs.npz"
# mediapipe 0.10.21's legacy FaceMesh on the astronaut (256x256), in pixels: nose tip, forehead, eye corners,
# mouth corners, chin, cheeks.  The shipped bundle must give the same mesh.
LEGACY_MESH = {1: (96.9, 112.1), 10: (99.5, 59.8), 33: (71.7, 85.9), 61: (77.8, 118.6), 152: (95.2, 150.1),
               234: (58.7, 94.7), 263: (125.1, 88.2), 291: (116.3, 120.8), 454: (137.4, 98.4)}


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    with np.load(ASTRONAUT) as inputs:
        return inputs["source"]


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def test_every_shipped_model_is_the_one_its_readme_names():
    readme = (FACE_MODELS / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([\w.]+)` \|.*\| `([0-9a-f]{64})` \|$", readme, flags=re.MULTILINE))
    assert set(listed) == {SHORT_RANGE_MODEL, FULL_RANGE_MODEL, LANDMARKER_MODEL}
    for name, sha256 in listed.items():
        assert hashlib.sha256((FACE_MODELS / name).read_bytes()).hexdigest() == sha256, name
    assert "Apache License" in (FACE_MODELS / "LICENSE").read_text()


def test_landmarker_bundle_holds_the_detector_and_the_mesh():
    with zipfile.ZipFile(io.BytesIO(face_tasks.landmarker_bundle())) as bundle:
        assert bundle.namelist() == ["face_detector.tflite", "face_landmarks_detector.tflite"]
        assert bundle.read("face_detector.tflite") == (FACE_MODELS / SHORT_RANGE_MODEL).read_bytes()
        assert bundle.read("face_landmarks_detector.tflite") == (FACE_MODELS / LANDMARKER_MODEL).read_bytes()


@pytest.mark.parametrize("long_range", [False, True])
def test_both_detectors_find_the_astronaut(astronaut, long_range):
    detector = FaceDetector(long_range=long_range)
    try:
        face = detector.detect(astronaut)
        assert face is not None and face.score > 0.8
        # The face (nose tip at 97, 112 in the legacy mesh) is inside the box, and the box is face-sized.
        assert face.x < 97 < face.x + face.width and face.y < 112 < face.y + face.height
        assert 70 < face.width < 120 and abs(face.width - face.height) <= 2
        assert detector.detect(np.full((256, 256, 3), 128, np.uint8)) is None
    finally:
        detector.close()


def test_mesh_matches_mediapipe_0_10_21_in_both_modes(astronaut):
    for static in (True, False):
        mesh = FaceLandmarks(static_images=static)
        try:
            landmarks = mesh(astronaut)
        finally:
            mesh.close()
        assert landmarks.shape == (MESH_LANDMARKS, 2) and landmarks.dtype == np.float64
        for index, expected in LEGACY_MESH.items():
            assert np.allclose(landmarks[index] * 256, expected, atol=0.5), (static, index, landmarks[index] * 256)


def test_tracking_follows_the_face_and_loses_it(astronaut):
    mesh = FaceLandmarks(static_images=False)
    try:
        first = mesh(astronaut)
        shifted = mesh(np.roll(astronaut, 12, axis=1))  # the next call: no smoothing, however soon it comes
        assert np.allclose((shifted - first)[:, 0].mean() * 256, 12, atol=1.5)
        assert mesh(np.full((256, 256, 3), 128, np.uint8)) is None
    finally:
        mesh.close()


def test_pose_search_keeps_the_frame_posed_like_the_avatar(astronaut):
    avatar, stream = FaceLandmarks(static_images=True), FaceLandmarks(static_images=False)
    try:
        search = BestReferenceSearch(avatar(astronaut))
        for degrees in (-25, -12, 15, 0, 6, 20):
            crop = rotated(astronaut, degrees)
            search.offer(crop, stream(crop))
        search.offer(np.zeros_like(astronaut), stream(np.zeros_like(astronaut)))  # no face: ignored
    finally:
        avatar.close()
        stream.close()
    assert np.array_equal(search.best_frame, astronaut)  # the 0 degree frame
    assert search.best_distance < 0.01


def test_images_that_are_not_rgb_uint8_are_refused_with_what_was_found(astronaut):
    detector, mesh = FaceDetector(), FaceLandmarks(static_images=True)
    try:
        for bad in (astronaut[..., 0], astronaut.astype(np.float32) / 255, astronaut[..., :2]):
            with pytest.raises(ValueError, match=r"expected an HxWx3 uint8 RGB image, found shape"):
                detector.detect(bad)
            with pytest.raises(ValueError, match=r"expected an HxWx3 uint8 RGB image"):
                mesh(bad)
    finally:
        detector.close()
        mesh.close()


def test_a_missing_model_says_how_to_reinstall(tmp_path, monkeypatch):
    monkeypatch.setattr(face_tasks, "FACE_MODELS", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"face model .*face_detection_short_range.tflite is missing.*pip install"):
        FaceDetector()
    with pytest.raises(FileNotFoundError, match=r"face_detection_short_range.tflite is missing"):
        FaceLandmarks(static_images=True)


def test_doctor_reports_the_versions_and_that_every_face_model_loads(tmp_path):
    pytest.importorskip("torch")  # run_live.py needs it
    from .test_cli import doctor_lines, run_tool

    lines = doctor_lines(run_tool("--doctor", home=tmp_path / "home", cwd=tmp_path))
    assert platform.python_version() in lines["python"][0]["detail"]
    assert f"numpy {np.__version__}" in lines["packages"][0]["detail"]
    assert lines["package mediapipe"][0]["detail"] == importlib.metadata.version("mediapipe")
    assert lines["package onnxruntime"][0]["detail"] == importlib.metadata.version("onnxruntime")
    for name in (SHORT_RANGE_MODEL, FULL_RANGE_MODEL, LANDMARKER_MODEL):
        line = lines[f"face model {name}"][0]
        assert line[1] == "OK  " and line["detail"] == f"loads and runs in mediapipe {importlib.metadata.version('mediapipe')}"


def test_doctor_fails_a_face_model_that_does_not_load(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # live.doctor needs it
    from live.doctor import check_face_models

    for name in (SHORT_RANGE_MODEL, FULL_RANGE_MODEL, LANDMARKER_MODEL):
        (tmp_path / name).write_bytes(b"not a model")
    monkeypatch.setattr(face_tasks, "FACE_MODELS", tmp_path)
    findings = list(check_face_models())
    assert [finding.topic for finding in findings] == [f"face model {name}" for name in
                                                       (SHORT_RANGE_MODEL, FULL_RANGE_MODEL, LANDMARKER_MODEL)]
    for finding in findings:
        assert finding.status == "FAIL" and "does not load in mediapipe" in finding.detail
        assert finding.fix == 'reinstall fomm-live: pip install -e ".[dev]"'

"""Parity with the original FOMM implementation, on any fixture directory of the reference format.

Run against another checkpoint with ``pytest tests/test_parity.py --parity-dir DIR``.
Tolerances (max abs, float32, CPU): keypoints 1e-5, generated frames 1e-4.
Every float32 backend usable here is checked too, each from an empty cache (so
the first start's exports run in the test), and eager again afterwards on the
same model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Animator, load_model
from engine.backends import BackendUnavailable
from engine.images import image_to_tensor
from engine.motion import Keypoints, make_motion_reference, transfer_motion

KEYPOINT_TOLERANCE = 1e-5
FRAME_TOLERANCE = 1e-4
MODES = {"rel_adapt": (True, True), "rel": (True, False), "abs": (False, False)}  # relative, adapt_scale
CONVENTIONS = {"ac1": True, "ac0": False}  # tag -> grid_sample align_corners


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], as the fixtures feed the networks."""
    return images.astype(np.float32) / np.float32(255)


class ParityCase:
    """One fixture directory: its model (per convention, fused or not), inputs and expected arrays."""

    def __init__(self, directory: Path):
        self.directory = directory
        with np.load(directory / "inputs.npz") as inputs:
            self.source = as_float(inputs["source"])
            self.driving = as_float(inputs["driving"])
        with np.load(directory / "expected.npz") as expected:
            self.expected = {key: expected[key] for key in expected.files}
        self._models = {}

    def model(self, align_corners: bool, fused: bool):
        key = (align_corners, fused)
        if key not in self._models:
            self._models[key] = load_model(
                self.directory / "config.yaml",
                self.directory / "checkpoint.pth.tar",
                align_corners=align_corners,
                fuse_layers=fused,
            )
        return self._models[key]

    def cases(self) -> list[tuple[str, str]]:
        """The (tag, mode) pairs whose predictions the fixture holds."""
        return [(tag, mode) for tag in CONVENTIONS for mode in MODES if f"{tag}_{mode}_prediction" in self.expected]


@pytest.fixture(scope="module")
def case(parity_dir: Path) -> ParityCase:
    if not (parity_dir / "expected.npz").is_file():
        pytest.fail(f"{parity_dir} is not a parity directory (expected config.yaml, checkpoint.pth.tar, inputs.npz, "
                    "expected.npz)")
    return ParityCase(parity_dir)


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    error = float(np.abs(actual - expected).max())
    assert error <= tolerance, f"{what}: max abs error {error:.3g} > {tolerance:g}"


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_keypoints_match(case: ParityCase, fused: bool):
    model = case.model(align_corners=True, fused=fused)
    source = model.detect_keypoints(image_to_tensor(case.source, model.frame_size, model.device, "source"))
    driving = model.detect_keypoints(torch.from_numpy(case.driving).permute(0, 3, 1, 2).contiguous())
    assert_close(source.value.numpy(), case.expected["kp_source_value"], KEYPOINT_TOLERANCE, "source keypoints")
    assert_close(source.jacobian.numpy(), case.expected["kp_source_jacobian"], KEYPOINT_TOLERANCE, "source jacobians")
    assert_close(driving.value.numpy(), case.expected["kp_driving_value"], KEYPOINT_TOLERANCE, "driving keypoints")
    assert_close(driving.jacobian.numpy(), case.expected["kp_driving_jacobian"], KEYPOINT_TOLERANCE,
                 "driving jacobians")


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_animator_frames_match_in_every_mode_and_convention(case: ParityCase, fused: bool):
    """Through the public float32 API, the first driving frame being the reference."""
    assert case.cases(), "the fixture holds no predictions"
    for tag, mode in case.cases():
        relative, adapt_scale = MODES[mode]
        model = case.model(align_corners=CONVENTIONS[tag], fused=fused)
        animator = Animator(model, case.source, relative=relative, adapt_scale=adapt_scale)
        frames = np.stack([animator(frame) for frame in case.driving])
        assert frames.dtype == np.float32
        expected = case.expected[f"{tag}_{mode}_prediction"].transpose(0, 2, 3, 1)
        assert_close(frames, expected, FRAME_TOLERANCE, f"{tag} {mode} frames")


@pytest.mark.parametrize("mode", MODES)
def test_normalised_keypoints_match(case: ParityCase, mode: str):
    if f"ac1_{mode}_kp_norm_value" not in case.expected:
        pytest.skip(f"fixture has no normalised keypoints for {mode}")
    relative, adapt_scale = MODES[mode]
    model = case.model(align_corners=True, fused=True)
    source = model.detect_keypoints(torch.from_numpy(case.source).permute(2, 0, 1)[None].contiguous())
    driving = model.detect_keypoints(torch.from_numpy(case.driving).permute(0, 3, 1, 2).contiguous())
    reference = Keypoints(driving.value[:1], driving.jacobian[:1])
    normalised = transfer_motion(driving, make_motion_reference(source, reference, adapt_scale), relative)
    assert_close(normalised.value.numpy(), case.expected[f"ac1_{mode}_kp_norm_value"], KEYPOINT_TOLERANCE,
                 f"{mode} keypoints")
    assert_close(normalised.jacobian.numpy(), case.expected[f"ac1_{mode}_kp_norm_jacobian"], KEYPOINT_TOLERANCE,
                 f"{mode} jacobians")


def test_dense_motion_outputs_match(case: ParityCase):
    prefix = "ac1_rel_adapt_"
    if f"{prefix}deformation" not in case.expected:
        pytest.skip("fixture has no dense motion outputs")
    model = case.model(align_corners=True, fused=True)
    state = model.encode_source(torch.from_numpy(case.source).permute(2, 0, 1)[None].contiguous())
    normalised = Keypoints(
        torch.from_numpy(case.expected[f"{prefix}kp_norm_value"]),
        torch.from_numpy(case.expected[f"{prefix}kp_norm_jacobian"]),
    )
    with torch.inference_mode():
        field = model.generator.dense_motion_network(state.motion, normalised)
    assert_close(field.deformation.numpy(), case.expected[f"{prefix}deformation"], FRAME_TOLERANCE, "deformation")
    assert_close(field.occlusion.numpy(), case.expected[f"{prefix}occlusion_map"], FRAME_TOLERANCE, "occlusion map")
    assert_close(field.masks.numpy(), case.expected[f"{prefix}mask"], FRAME_TOLERANCE, "masks")


def test_align_corners_convention_matters(case: ParityCase):
    """The two grid_sample conventions give visibly different frames: the option is not a no-op."""
    if "ac0_rel_adapt_prediction" not in case.expected:
        pytest.skip("fixture has no ac0 predictions")
    frames = {}
    for tag, align_corners in CONVENTIONS.items():
        animator = Animator(case.model(align_corners, fused=True), case.source)
        frames[tag] = np.stack([animator(frame) for frame in case.driving])
    assert float(np.abs(frames["ac1"] - frames["ac0"]).max()) > 100 * FRAME_TOLERANCE


def assert_every_case_matches(case: ParityCase, models: dict[bool, object], what: str) -> None:
    """Frames through the public API for every (convention, mode) the fixture holds; models: align_corners -> model."""
    for tag, mode in case.cases():
        relative, adapt_scale = MODES[mode]
        animator = Animator(models[CONVENTIONS[tag]], case.source, relative=relative, adapt_scale=adapt_scale)
        frames = np.stack([animator(frame) for frame in case.driving])
        assert_close(frames, case.expected[f"{tag}_{mode}_prediction"].transpose(0, 2, 3, 1), FRAME_TOLERANCE,
                     f"{what}: {tag} {mode} frames")


# torch.compile builds for 1-2 minutes per model on a 2-core CPU (two models per variant): run with --run-slow.
BACKENDS = ["eager", "onnxruntime", pytest.param("compile", marks=pytest.mark.slow)]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_matches_from_an_empty_cache_and_eager_after_it(case: ParityCase, backend: str, fused: bool,
                                                                     tmp_path, monkeypatch):
    """A first start (nothing cached: ONNX export, compilation), then the same models switched back to eager."""
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    models = {}
    for align_corners in sorted({CONVENTIONS[tag] for tag, _ in case.cases()}):
        try:
            models[align_corners] = load_model(case.directory / "config.yaml", case.directory / "checkpoint.pth.tar",
                                               align_corners=align_corners, fuse_layers=fused, backend=backend)
        except BackendUnavailable as error:
            pytest.skip(f"backend {backend} cannot run here: {error}")
    assert_every_case_matches(case, models, backend)
    if backend == "eager":
        return
    for model in models.values():
        model.use_backend("eager")
    assert_every_case_matches(case, models, f"eager after {backend}")

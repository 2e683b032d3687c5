"""int8 for the OpenVINO backend: the render graph quantized by NNCF on real faces, kept only if it looks right.

Calibration set (made at build time, nothing downloaded): the real portrait
of the test fixture (scikit-image's astronaut photograph, 256x256,
``tests/fixtures/fomm-parity-small/inputs.npz`` key ``source``) as the
avatar, and CALIBRATION_FRAMES driving frames made from the same photograph
by random head poses (rotation up to 12 degrees, scale 0.9-1.1, shift up to
8% of the side) and colour changes (per-channel gain 0.85-1.15, brightness
+-20 levels), drawn with seed 0.  The render inputs are what the live tool
feeds the graph: the avatar's cached source state and the driving
keypoints after relative motion transfer (adapt scale), with the undistorted
photograph as the reference pose; keypoints come from the float32 detector.

Held-out check: HELD_OUT_FRAMES frames drawn the same way with seed 1 (none
of them used for calibration) are rendered by the int8 graph and by eager
float32; the worst frame's PSNR (dB, images in [0, 1]) and the largest
keypoint difference between the backend's detector and eager float32 are
logged, stored beside the compiled model (``<artifact>.quality.json``), and
compared with a :class:`QualityGate`.  A model that fails it is refused
(BackendUnavailable, so ``auto`` falls back), and the figures are kept so the
next start refuses at once instead of quantizing again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from ..export import FlatRender, flatten_source
from ..motion import make_motion_reference, transfer_motion
from .artifacts import discard, load_artifact
from .base import BackendUnavailable

if TYPE_CHECKING:
    from .openvino import OpenVinoBackend

log = logging.getLogger(__name__)

FACE_PHOTO = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "fomm-parity-small" / "inputs.npz"
CALIBRATION_FRAMES = 48
HELD_OUT_FRAMES = 8


@dataclass(frozen=True)
class QualityGate:
    """What an int8 render graph must keep, against eager float32 on held-out frames.

    min_psnr_db: of the worst held-out frame.  30 dB is where lossy video
    codecs' artefacts start to show on faces; a video call's own encoder
    already costs 30-40 dB, so above it int8's loss is hidden under the
    call's.  max_keypoint_error: largest keypoint difference (coordinates
    in [-1, 1]); 1e-3 is an eighth of a pixel of the 256x256 crop.
    """

    min_psnr_db: float = 30.0
    max_keypoint_error: float = 1e-3

    def failures(self, quality: dict) -> list[str]:
        """What ``quality`` (see :func:`measure_quality`) falls short in; empty if it passes."""
        failures = []
        if quality["worst_psnr_db"] < self.min_psnr_db:
            failures.append(f"worst-frame PSNR {quality['worst_psnr_db']:.1f} dB < {self.min_psnr_db:g} dB")
        if quality["max_keypoint_error"] > self.max_keypoint_error:
            failures.append(f"keypoint error {quality['max_keypoint_error']:.2g} > {self.max_keypoint_error:g}")
        return failures


DEFAULT_GATE = QualityGate()


def face_photo(size: tuple[int, int]) -> np.ndarray:
    """The astronaut portrait, HxWx3 uint8 RGB at ``size`` (height, width)."""
    if not FACE_PHOTO.is_file():
        raise BackendUnavailable(f"int8 calibration needs the face photograph {FACE_PHOTO} (from a source checkout "
                                 "of fomm-live), which is missing")
    with np.load(FACE_PHOTO) as inputs:
        photo = inputs["source"]
    height, width = size
    return cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA) if photo.shape[:2] != size else photo


def driving_frames(photo: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """``count`` frames of ``photo`` (HxWx3 uint8) in random head poses and lighting (see the module docstring)."""
    rng = np.random.default_rng(seed)
    height, width = photo.shape[:2]
    frames = []
    for _ in range(count):
        angle, scale = rng.uniform(-12, 12), rng.uniform(0.9, 1.1)
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
        matrix[:, 2] += rng.uniform(-0.08, 0.08, 2) * (width, height)
        posed = cv2.warpAffine(photo, matrix, (width, height), borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        lit = posed * rng.uniform(0.85, 1.15, 3) + rng.uniform(-20, 20)
        frames.append(np.clip(lit, 0, 255).astype(np.uint8))
    return frames


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 images -> Bx3xHxW float32 in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).contiguous()


@torch.inference_mode()
def render_inputs(model, frames: list[np.ndarray]) -> tuple[list[tuple[np.ndarray, ...]], torch.Tensor]:
    """The render graph's inputs for each driving frame (eager float32, as the live tool makes them), and the
    frames as a Bx3xHxW tensor."""
    photo = face_photo(model.frame_size)
    source_frame = to_tensor([photo])
    source_keypoints = model.kp_detector(source_frame)
    source = model.generator.encode_source(source_frame, source_keypoints)
    motion = make_motion_reference(source_keypoints, source_keypoints, adapt_scale=True)
    flat_source = [t.contiguous().numpy() for t in flatten_source(source)]
    batch = to_tensor(frames)
    samples = []
    for index in range(len(frames)):
        driving = model.kp_detector(batch[index:index + 1])
        transferred = transfer_motion(driving, motion, relative=True)
        samples.append((*flat_source, transferred.value.contiguous().numpy(), transferred.jacobian.contiguous().numpy()))
    return samples, batch


def psnr_db(actual: np.ndarray, expected: np.ndarray) -> float:
    """Peak signal-to-noise ratio of images in [0, 1] (infinite when identical)."""
    mse = float(np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def measure_quality(backend: "OpenVinoBackend", render_model) -> dict:
    """The int8 render graph (and the backend's keypoint detector) against eager float32 on the held-out frames."""
    model = backend.model
    frames = driving_frames(face_photo(model.frame_size), HELD_OUT_FRAMES, seed=1)
    samples, batch = render_inputs(model, frames)
    request = render_model.create_infer_request()
    keypoints_request = backend.keypoints_model.create_infer_request()
    psnrs, keypoint_errors, times = [], [], []
    for index, sample in enumerate(samples):
        with torch.inference_mode():
            expected_keypoints = model.kp_detector(batch[index:index + 1])
            expected = FlatRender(model.render_step)(*(torch.from_numpy(array) for array in sample)).numpy()
        begin = time.perf_counter()
        value, jacobian = backend.infer(keypoints_request, [batch[index:index + 1]])
        (actual,) = backend.infer(request, list(sample))
        times.append((time.perf_counter() - begin) * 1e3)
        psnrs.append(psnr_db(actual.numpy(), expected))
        keypoint_errors.append(max(float((value - expected_keypoints.value).abs().max()),
                                   float((jacobian - expected_keypoints.jacobian).abs().max())))
    return {"held_out_frames": len(samples), "worst_psnr_db": round(min(psnrs), 2),
            "mean_psnr_db": round(float(np.mean(psnrs)), 2), "max_keypoint_error": float(max(keypoint_errors)),
            "ms_per_frame": round(float(np.median(times[1:])), 1)}


def quantize_render(backend: "OpenVinoBackend"):
    """The render graph, quantized to int8 by NNCF on the calibration frames (see the module docstring)."""
    try:
        import nncf
    except ImportError:
        raise BackendUnavailable("int8 needs nncf, which is not installed: pip install -e \".[openvino]\"") from None
    model = backend.model
    samples, _ = render_inputs(model, driving_frames(face_photo(model.frame_size), CALIBRATION_FRAMES, seed=0))
    graph = backend.convert_render()
    begin = time.perf_counter()
    log.info("OpenVINO int8: calibrating the render graph on %d face frames (once per model and version)", len(samples))
    quantized = nncf.quantize(graph, nncf.Dataset(samples), subset_size=len(samples))
    log.info("OpenVINO int8: quantized in %.0f s", time.perf_counter() - begin)
    return quantized


def build_int8_render(backend: "OpenVinoBackend", gate: QualityGate):
    """The compiled int8 render graph and its quality figures: from the cache, or quantized, measured and stored.

    Raises BackendUnavailable (naming the figures) when the model fails ``gate``, now or when it was built.
    """
    path = backend.artifact("render", "int8")
    report_path = path.with_name(path.name + ".quality.json")
    quality = read_report(report_path)
    if quality is not None:
        refuse_if_failing(gate, quality, report_path)

    def build(temporary: Path) -> None:
        report_path.unlink(missing_ok=True)  # figures belong to one build
        backend.compile_to(quantize_render(backend), temporary, "int8", "int8 render")

    compiled = load_artifact(path, build, "OpenVINO: building the int8 render graph",
                             lambda built: backend.import_compiled(built, "int8"))
    quality = read_report(report_path)
    if quality is None:
        quality = measure_quality(backend, compiled)
        log.info("OpenVINO int8 against float32 on %d held-out face frames: worst PSNR %.1f dB (mean %.1f), keypoint "
                 "error %.2g, %.0f ms per frame", quality["held_out_frames"], quality["worst_psnr_db"],
                 quality["mean_psnr_db"], quality["max_keypoint_error"], quality["ms_per_frame"])
        report_path.write_text(json.dumps({**quality, "gate": asdict(gate)}, indent=2) + "\n")
    if gate.failures(quality):
        discard(path)  # never loaded again; the report remembers why
    refuse_if_failing(gate, quality, report_path)
    return compiled, quality


def read_report(path: Path) -> dict | None:
    """A stored quality report, or None when absent or unreadable (the model is then measured again)."""
    try:
        report = json.loads(path.read_text())
        float(report["worst_psnr_db"]), float(report["max_keypoint_error"])
        return report
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stored_reports(compiled_dir: Path) -> list[str]:
    """One line per int8 quality report in the artifact cache's ``compiled`` folder (for ``--doctor``), newest first."""
    lines = []
    reports = sorted(compiled_dir.glob("openvino-render-*.quality.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in reports:
        report = read_report(path)
        if report is None:
            lines.append(f"{path.name}: unreadable (measured again on the next int8 start)")
            continue
        gate = QualityGate(**report.get("gate", {}))
        failures = gate.failures(report)
        verdict = f"refused: {'; '.join(failures)}" if failures else "passed"
        lines.append(f"int8 against float32 on {report.get('held_out_frames', '?')} held-out face frames: worst PSNR "
                     f"{report['worst_psnr_db']:.1f} dB, keypoint error {report['max_keypoint_error']:.2g}, "
                     f"{report.get('ms_per_frame', float('nan')):.0f} ms per frame: {verdict} ({path.name})")
    return lines


def refuse_if_failing(gate: QualityGate, quality: dict, report_path: Path) -> None:
    failures = gate.failures(quality)
    if failures:
        raise BackendUnavailable(f"the int8 model fails the quality gate against float32 on held-out face frames: "
                                 f"{'; '.join(failures)} (figures in {report_path}); use --precision bfloat16 or "
                                 "float32")

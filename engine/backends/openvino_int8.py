"""int8 for the OpenVINO backend: the render graph quantized by NNCF on real faces, kept only if it looks right.

Calibration set (shipped, nothing downloaded): the real portraits in
``engine/calibration/faces.npz`` (256x256x3 uint8 RGB each; today Eileen
Collins, NASA, and Grace Hopper, US Navy, both public domain: sources and how
they were cropped in ``engine/calibration/README.md``).  Each face is an
avatar and each face drives: every (avatar, driver) pair, the driver's face
included as its own avatar, gets CALIBRATION_FRAMES_PER_PAIR driving frames
made from the driver's photograph by random head poses (rotation up to 12
degrees, scale 0.9-1.1, shift up to 8% of the side, reflected at the border)
and lighting (per-channel gain 0.85-1.15, brightness +-20 levels), drawn with
seed 0.  The render inputs are what the live tool feeds the graph: the
avatar's cached source state and the driving keypoints after relative motion
transfer (adapt scale), with the driver's undistorted photograph as the
reference pose; keypoints come from the float32 detector.

Held-out check: HELD_OUT_FRAMES_PER_PAIR frames per pair drawn the same way
with seed 1, so in poses and lighting none of the calibration frames has (from
three shipped faces on, the last face is also left out of calibration
entirely and appears in the held-out pairs only).  They are rendered by the
int8 graph and by eager float32; the worst frame's PSNR (dB, images in
[0, 1]) and the largest keypoint difference between the backend's detector
and eager float32 are logged, stored beside the compiled model
(``<artifact>.quality.json``), and compared with a :class:`QualityGate`.  A
model that fails it is refused (BackendUnavailable, so ``auto`` falls back),
and the figures are kept so the next start refuses at once instead of
quantizing again.  The artifact's key holds the sha256 of faces.npz
(:func:`calibration_digest`): a new calibration set builds a new model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
import zipfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..export import FlatRender, flatten_source
from ..motion import make_motion_reference, transfer_motion
from .artifacts import discard, load_artifact
from .base import BackendUnavailable

if TYPE_CHECKING:
    from .openvino import OpenVinoBackend

log = logging.getLogger(__name__)

FACE_SIZE = 256  # side of each shipped face
CALIBRATION_FRAMES_PER_PAIR = 12  # 48 frames from two faces
HELD_OUT_FRAMES_PER_PAIR = 2  # 8 frames from two faces
CALIBRATION_SEED, HELD_OUT_SEED = 0, 1
REPORT_SUFFIX = ".quality.json"  # beside the compiled model: quality_report_path


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


def faces_file():
    """The shipped calibration faces, ``engine/calibration/faces.npz`` (an importlib.resources Traversable)."""
    return resources.files("engine") / "calibration" / "faces.npz"


def faces_bytes() -> bytes:
    """The bytes of faces.npz; BackendUnavailable (saying to reinstall) when the install lacks them."""
    try:
        return faces_file().read_bytes()
    except OSError as error:
        raise BackendUnavailable(f"int8 calibration needs the face photographs shipped in {faces_file()}, which "
                                 f"cannot be read ({error}): reinstall fomm-live") from None


def calibration_digest() -> str:
    """sha256 of the shipped calibration faces (in the int8 model's cache key)."""
    return hashlib.sha256(faces_bytes()).hexdigest()


def calibration_faces() -> dict[str, np.ndarray]:
    """The shipped faces by name, in their stored order, each FACE_SIZE x FACE_SIZE x 3 uint8 RGB."""
    try:
        with np.load(io.BytesIO(faces_bytes()), allow_pickle=False) as archive:
            faces = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise BackendUnavailable(f"the int8 calibration faces {faces_file()} are not a readable .npz ({error}): "
                                 "reinstall fomm-live") from None
    if not faces:
        raise BackendUnavailable(f"the int8 calibration faces {faces_file()} hold no face: reinstall fomm-live")
    for name, face in faces.items():
        if face.shape != (FACE_SIZE, FACE_SIZE, 3) or face.dtype != np.uint8:
            raise BackendUnavailable(f"int8 calibration face {name!r} in {faces_file()}: expected {FACE_SIZE}x"
                                     f"{FACE_SIZE}x3 uint8, found {'x'.join(map(str, face.shape))} {face.dtype}")
    return faces


def as_image(face: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float32 in [0, 1] at ``size`` (height, width), anti-aliased where it shrinks."""
    image = torch.from_numpy(face).permute(2, 0, 1)[None].float().div(255)
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return image.clamp(0, 1).contiguous()


def random_poses(photo: torch.Tensor, count: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` frames of ``photo`` (1x3xHxW float32 in [0, 1]) in random head poses and lighting (see the module
    docstring): Bx3xHxW float32 in [0, 1], on 8-bit levels as a camera's."""
    height, width = photo.shape[-2:]
    angles = np.radians(rng.uniform(-12, 12, count))
    scales = rng.uniform(0.9, 1.1, count)
    shifts = rng.uniform(-0.08, 0.08, (count, 2))  # fractions of the side, (x, y)
    gains = rng.uniform(0.85, 1.15, (count, 3))
    offsets = rng.uniform(-20, 20, count) / 255
    # The pose maps a pixel p (from the centre) to scale * R(angle) p + shift.  affine_grid wants the inverse, from
    # output to input, in coordinates normalised to [-1, 1] per axis: D R(-angle) D^-1 / scale with D = diag(1/w, 1/h).
    cos, sin = np.cos(angles), np.sin(angles)
    unrotate = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)
    to_unit, from_unit = np.diag([1 / width, 1 / height]), np.diag([width, height])
    linear = to_unit @ unrotate @ from_unit / scales[:, None, None]
    translation = -linear @ (2 * shifts)[..., None]
    theta = torch.from_numpy(np.concatenate([linear, translation], -1)).float()
    grid = F.affine_grid(theta, [count, 3, height, width], align_corners=False)
    posed = F.grid_sample(photo.expand(count, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)
    lit = posed * torch.from_numpy(gains).float()[:, :, None, None] + torch.from_numpy(offsets).float()[:, None, None, None]
    return lit.clamp(0, 1).mul(255).round().div(255)


@dataclass(frozen=True)
class FacePair:
    """One shipped face as the avatar, driven by another's (or its own) frames, as in a call."""

    avatar: str
    driver: str


def face_pairs(names: list[str]) -> tuple[list[FacePair], list[FacePair]]:
    """(calibration pairs, held-out pairs) of the faces ``names``: every avatar with every driver.  From three faces
    on, the last one is kept out of calibration: it appears in held-out pairs only."""
    calibrated = names[:-1] if len(names) >= 3 else names
    return ([FacePair(avatar, driver) for avatar in calibrated for driver in calibrated],
            [FacePair(avatar, driver) for avatar in names for driver in names])


@dataclass(frozen=True)
class PairFrames:
    """A pair's images at the model's size (1x3xHxW / Bx3xHxW float32 in [0, 1]): the avatar, the driver's
    undistorted photograph (the reference pose) and the driving frames."""

    pair: FacePair
    avatar: torch.Tensor
    reference: torch.Tensor
    frames: torch.Tensor


def pair_frames(size: tuple[int, int], held_out: bool) -> list[PairFrames]:
    """The calibration frames, or the held-out ones, of every pair (see the module docstring)."""
    faces = {name: as_image(face, size) for name, face in calibration_faces().items()}
    calibration, held_out_pairs = face_pairs(list(faces))
    pairs, per_pair, seed = ((held_out_pairs, HELD_OUT_FRAMES_PER_PAIR, HELD_OUT_SEED) if held_out
                             else (calibration, CALIBRATION_FRAMES_PER_PAIR, CALIBRATION_SEED))
    rng = np.random.default_rng(seed)
    return [PairFrames(pair, faces[pair.avatar], faces[pair.driver], random_poses(faces[pair.driver], per_pair, rng))
            for pair in pairs]


@torch.inference_mode()
def render_inputs(model, pairs: list[PairFrames]) -> list[tuple[np.ndarray, ...]]:
    """The render graph's inputs for each driving frame of ``pairs``, in order (eager float32, as the live tool
    makes them)."""
    samples = []
    for pair in pairs:
        avatar_keypoints = model.kp_detector(pair.avatar)
        source = model.generator.encode_source(pair.avatar, avatar_keypoints)
        motion = make_motion_reference(avatar_keypoints, model.kp_detector(pair.reference), adapt_scale=True)
        flat_source = [t.contiguous().numpy() for t in flatten_source(source)]
        transferred = transfer_motion(model.kp_detector(pair.frames), motion, relative=True)
        for value, jacobian in zip(transferred.value.split(1), transferred.jacobian.split(1)):
            samples.append((*flat_source, value.contiguous().numpy(), jacobian.contiguous().numpy()))
    return samples


def psnr_db(actual: np.ndarray, expected: np.ndarray) -> float:
    """Peak signal-to-noise ratio of images in [0, 1] (infinite when identical)."""
    mse = float(np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def measure_quality(backend: "OpenVinoBackend", render_model) -> dict:
    """The int8 render graph (and the backend's keypoint detector) against eager float32 on the held-out frames."""
    model = backend.model
    pairs = pair_frames(model.frame_size, held_out=True)
    samples = render_inputs(model, pairs)
    batch = torch.cat([pair.frames for pair in pairs])
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
    samples = render_inputs(model, pair_frames(model.frame_size, held_out=False))
    graph = backend.convert_render()
    begin = time.perf_counter()
    log.info("OpenVINO int8: calibrating the render graph on %d frames of real faces (once per model and "
             "version)", len(samples))
    quantized = nncf.quantize(graph, nncf.Dataset(samples), subset_size=len(samples))
    log.info("OpenVINO int8: quantized in %.0f s", time.perf_counter() - begin)
    return quantized


def build_int8_render(backend: "OpenVinoBackend", gate: QualityGate):
    """The compiled int8 render graph and its quality figures: from the cache, or quantized, measured and stored.

    Raises BackendUnavailable (naming the figures) when the model fails ``gate``, now or when it was built.
    """
    path = backend.artifact("render", "int8")
    report_path = quality_report_path(path)
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


def quality_report_path(artifact: Path) -> Path:
    """Where the quality figures of the int8 model cached at ``artifact`` are kept: ``<artifact>.quality.json``."""
    return artifact.with_name(artifact.name + REPORT_SUFFIX)


def read_report(path: Path) -> dict | None:
    """A stored quality report, or None when absent or unreadable (the model is then measured again)."""
    try:
        report = json.loads(path.read_text())
        float(report["worst_psnr_db"]), float(report["max_keypoint_error"])
        return report
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class StoredReport:
    """One int8 quality report of the artifact cache, as ``--doctor`` shows it.

    line: what it says, in one line.  refused: whether the model it measured failed its gate (False for a report
    that cannot be read: the model is measured again on the next int8 start).
    """

    line: str
    refused: bool


def stored_reports(compiled_dir: Path) -> list[StoredReport]:
    """Every int8 quality report in the artifact cache's ``compiled`` folder, newest first."""
    entries = []
    dated = []
    for path in compiled_dir.glob(f"openvino-render-*{REPORT_SUFFIX}"):
        try:
            dated.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # removed meanwhile (the cache's size limit, another process)
            continue
    for _, path in sorted(dated, reverse=True):
        report = read_report(path)
        if report is None:
            entries.append(StoredReport(f"{path.name}: unreadable (measured again on the next int8 start)", False))
            continue
        gate = QualityGate(**report.get("gate", {}))
        failures = gate.failures(report)
        verdict = f"refused: {'; '.join(failures)}" if failures else "passed"
        line = (f"int8 against float32 on {report.get('held_out_frames', '?')} held-out face frames: worst PSNR "
                f"{report['worst_psnr_db']:.1f} dB, keypoint error {report['max_keypoint_error']:.2g}, "
                f"{report.get('ms_per_frame', float('nan')):.0f} ms per frame: {verdict} ({path.name})")
        entries.append(StoredReport(line, refused=bool(failures)))
    return entries


def refuse_if_failing(gate: QualityGate, quality: dict, report_path: Path) -> None:
    failures = gate.failures(quality)
    if failures:
        raise BackendUnavailable(f"the int8 model fails the quality gate against float32 on held-out face frames: "
                                 f"{'; '.join(failures)} (figures in {report_path}); use --precision bfloat16 or "
                                 "float32")

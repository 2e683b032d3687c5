"""``run_live.py --doctor``: check the machine for everything the live tool needs.

Each check yields :class:`Finding` lines that say OK, or what is wrong and
what to do about it.  Checks only look: they install nothing, change
nothing, and never download.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from engine import EngineError
from engine.errors import squeezed
from engine.backends import BACKENDS, backend_class
from engine.backends.artifacts import digest_path
from engine.backends.eviction import LIMIT_ENV, cache_limit_bytes, size_text
from engine.backends.openvino_int8 import stored_reports
from engine.speed import END_TO_END_FPS, MEASURED_ON, fps_range
from engine.weights import DEFAULT_CHECKPOINT_NAME, cache_root, checkpoint_search_paths, file_md5

from .sinks import V4L2LOOPBACK_FIX
from .video_file import h264_unavailable_reason


@dataclass(frozen=True)
class Finding:
    """One line of the report.  status: "OK", "WARN" (works, but worse) or "FAIL" (will not work)."""

    status: str
    topic: str
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.status:<4} {self.topic}: {self.detail}" + (f"  -> {self.fix}" if self.fix else "")


def run_doctor(checkpoint: str | None, expected_md5: str) -> list[Finding]:
    """Every check, in the order a user would fix things."""
    checks: list[Callable[[], Iterable[Finding]]] = [
        check_python,
        check_packages,
        check_face_models,
        check_torch_device,
        check_backends,
        check_cache,
        check_cameras,
        check_virtual_camera,
        check_display,
        check_video_output,
        lambda: check_weights(checkpoint, expected_md5),
    ]
    findings = []
    for check in checks:
        try:
            findings.extend(check())
        except Exception as error:  # a broken check must not hide the others
            findings.append(Finding("FAIL", getattr(check, "__name__", "check"), f"the check itself failed: {error!r}"))
    return findings


def check_python() -> Iterator[Finding]:
    version = platform.python_version()
    if sys.version_info >= (3, 10):
        yield Finding("OK", "python", f"{version} ({sys.executable})")
    else:
        yield Finding("FAIL", "python", f"{version} is too old", "use Python 3.10 or newer")


REQUIRED = ("torch", "numpy", "pyyaml", "safetensors", "tqdm")
OPTIONAL = {  # distribution: (what it is for, what to install)
    "opencv-contrib-python": ("webcam capture and the preview window", "opencv-contrib-python"),
    "mediapipe": ("face framing", '"mediapipe>=1.2"'),
    "pyvirtualcam": ("the virtual camera", "pyvirtualcam"),
    "onnxruntime": ("ONNX Runtime inference", '-e ".[onnx]"'),
    "torch-tensorrt": ("TensorRT inference on NVIDIA GPUs", '-e ".[tensorrt]"'),
}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages() -> Iterator[Finding]:
    missing = [name for name in REQUIRED if _version(name) is None]
    present = ", ".join(f"{name} {_version(name)}" for name in REQUIRED if name not in missing)
    if missing:
        yield Finding("FAIL", "packages", f"missing {', '.join(missing)} (found {present})", 'pip install -e "."')
    else:
        yield Finding("OK", "packages", present)
    for distribution, (purpose, install) in OPTIONAL.items():
        version = _version(distribution)
        if version is None:
            yield Finding("WARN", f"package {distribution}", f"not installed: needed for {purpose}",
                          f"pip install {install}")
        else:
            yield Finding("OK", f"package {distribution}", version)


def check_face_models() -> Iterator[Finding]:
    """Each face model shipped in live/face_models/ loads in mediapipe's Tasks API and runs on a blank frame."""
    mediapipe = _version("mediapipe")
    if mediapipe is None:
        return  # reported with the packages
    from .face_tasks import FULL_RANGE_MODEL, LANDMARKER_MODEL, SHORT_RANGE_MODEL
    from .framing import FaceDetector
    from .pose_match import FaceLandmarks

    blank = np.zeros((192, 192, 3), np.uint8)
    for name, make, run in ((SHORT_RANGE_MODEL, lambda: FaceDetector(long_range=False), lambda task: task.detect(blank)),
                            (FULL_RANGE_MODEL, lambda: FaceDetector(long_range=True), lambda task: task.detect(blank)),
                            (LANDMARKER_MODEL, lambda: FaceLandmarks(static_images=True), lambda task: task(blank))):
        try:
            task = make()
            try:
                run(task)
            finally:
                task.close()
        except Exception as error:
            old = tuple(int(part) for part in mediapipe.split(".")[:2] if part.isdigit()) < (1, 2)
            fix = 'pip install "mediapipe>=1.2"' if old else 'reinstall fomm-live: pip install -e ".[dev]"'
            reason = squeezed(str(error), 300) or repr(error)
            yield Finding("FAIL", f"face model {name}", f"does not load in mediapipe {mediapipe}: {reason}", fix)
        else:
            yield Finding("OK", f"face model {name}", f"loads and runs in mediapipe {mediapipe}")


CPU_SPEED = (f"measured {max(fastest for _, fastest in END_TO_END_FPS.values()):g} frames per second at best, "
             f"{' / '.join(f'{b} {p} {fps_range(b, p)}' for b, p in END_TO_END_FPS)}, on {MEASURED_ON}")


def check_torch_device() -> Iterator[Finding]:
    build = f"torch {torch.__version__} (CUDA {torch.version.cuda})" if torch.version.cuda else \
        f"torch {torch.__version__} (CPU-only build)"
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            yield Finding("OK", f"gpu cuda:{index}", f"{props.name}, compute capability {props.major}.{props.minor}, "
                          f"{props.total_memory / 2**30:.1f} GiB; {build}")
    elif torch.version.cuda:
        yield Finding("WARN", "gpu", f"no CUDA device visible to {build}: the tool will run on the CPU ({CPU_SPEED})",
                      "check the NVIDIA driver with nvidia-smi")
    else:
        yield Finding("WARN", "gpu", f"{build}: the tool will run on the CPU ({CPU_SPEED})",
                      "on a machine with an NVIDIA GPU, install the CUDA build of torch")


def check_backends() -> Iterator[Finding]:
    """Every inference backend on every device here: usable, or why not (quick checks, nothing is built)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for name in BACKENDS:
        backend = backend_class(name)
        for device in devices:
            reason = backend.unavailable_reason(device)
            if reason is None:
                yield Finding("OK", f"backend {name} ({device.type})", f"usable: {', '.join(backend.precisions[device.type])}")
            elif device.type in backend.precisions or len(devices) == 1:
                yield Finding("WARN", f"backend {name} ({device.type})", f"not usable: {reason}",
                              "optional; run_live.py picks the fastest usable backend by itself")


def check_cache() -> Iterator[Finding]:
    root = cache_root()
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK):
        yield Finding("FAIL", "cache", f"{root} is not writable: converted weights cannot be cached",
                      "set FOMM_LIVE_HOME to a writable directory")
        return
    copies = sorted((root / "safetensors").glob("*.safetensors"))
    # An artifact is what a backend built and recorded the digest of; anything else there (a timing cache, a
    # build cut short, an entry whose digest was lost and that will be rebuilt) is not counted.
    compiled = sorted(p for p in (root / "compiled").glob("*") if p.is_file() and digest_path(p).is_file())
    failed_builds = sorted((root / "compiled").glob("*.failed"))
    provider_engines = sorted(p for p in (root / "compiled" / "onnxruntime-tensorrt").glob("*") if p.is_file())
    size = sum(p.stat().st_size for p in copies + compiled + provider_engines) / 2**20
    kinds = sorted({p.name.split("-")[0] for p in compiled} | ({"onnxruntime-tensorrt"} if provider_engines else set()))
    compiled += provider_engines
    yield Finding("OK", "cache", f"{root} (writable; {len(copies)} safetensors weight copies, {len(compiled)} compiled "
                  f"artifacts{' (' + ', '.join(kinds) + ')' if kinds else ''}, {size:.0f} MiB)")
    try:
        limit = cache_limit_bytes()
    except EngineError as error:
        yield Finding("FAIL", "cache limit", str(error), f"unset {LIMIT_ENV} (4 GiB) or set it to a number, e.g. 10")
    else:
        yield Finding("OK", "cache limit", f"compiled models are kept under {size_text(limit)}, the least recently "
                      f"used removed first ({LIMIT_ENV})")
    for report in stored_reports(root / "compiled"):
        yield Finding("WARN" if report.refused else "OK", "int8 quality", report.line,
                      "the int8 model was refused: run with --precision bfloat16 or float32" if report.refused else "")
    if failed_builds:
        yield Finding("WARN", "cache", f"{len(failed_builds)} TensorRT build(s) failed before and are skipped until their "
                      f"library versions change: {failed_builds[0].read_text().strip()[:200]}",
                      "delete " + " ".join(str(p) for p in failed_builds) + " to try again")


def _video_devices() -> list[tuple[str, str, bool]]:
    """(device, name, is_loopback) of every V4L2 device on Linux; loopback devices are virtual."""
    devices = []
    for node in sorted(Path("/sys/class/video4linux").glob("video*")):
        name_file = node / "name"
        name = name_file.read_text().strip() if name_file.exists() else "?"
        virtual = "/virtual/" in str(node.resolve())
        devices.append((f"/dev/{node.name}", name, virtual))
    return devices


def check_cameras() -> Iterator[Finding]:
    if platform.system() != "Linux":
        yield Finding("OK", "cameras", f"not listed on {platform.system()}; the live tool opens --camera 0 by default")
        return
    cameras = [f"{device} ({name})" for device, name, virtual in _video_devices() if not virtual]
    if cameras:
        yield Finding("OK", "cameras", ", ".join(cameras))
    else:
        yield Finding("WARN", "cameras", "no webcam found",
                      "plug one in, or drive the avatar from a video file with --camera path/to/video.mp4")


def check_virtual_camera() -> Iterator[Finding]:
    if platform.system() == "Linux":
        loopbacks = [f"{device} ({name})" for device, name, virtual in _video_devices() if virtual]
        if loopbacks:
            yield Finding("OK", "virtual camera device", "v4l2loopback: " + ", ".join(loopbacks))
        else:
            yield Finding("FAIL", "virtual camera device",
                          "no v4l2loopback device: call apps cannot see the avatar (the preview still works)",
                          V4L2LOOPBACK_FIX)
            return  # pyvirtualcam would fail for the same reason
    else:
        yield Finding("OK", "virtual camera device",
                      "uses the OBS virtual camera on Windows and macOS: install OBS Studio 28 or newer")
    if _version("pyvirtualcam") is None:
        return  # reported with the packages
    pyvirtualcam = importlib.import_module("pyvirtualcam")
    try:
        with pyvirtualcam.Camera(width=64, height=64, fps=30) as camera:
            yield Finding("OK", "virtual camera", f"opened {camera.device} with pyvirtualcam ({camera.backend})")
    except Exception as error:
        fix = V4L2LOOPBACK_FIX if platform.system() == "Linux" else "install OBS Studio and start its virtual camera once"
        yield Finding("FAIL", "virtual camera", f"pyvirtualcam cannot open one: {error}", fix)


def check_video_output() -> Iterator[Finding]:
    """--output: H.264 through PyAV, and ffmpeg to copy the driving video's sound in."""
    reason = h264_unavailable_reason()
    if reason:
        yield Finding("WARN", "video output", f"no H.264 ({reason}): --output falls back to MPEG-4 Part 2, which "
                      "browsers and many players do not play", "pip install --force-reinstall av")
    else:
        yield Finding("OK", "video output", f"H.264 through PyAV {_version('av')}")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        yield Finding("OK", "ffmpeg", f"{ffmpeg}: the driving video's sound is copied into --output")
    else:
        yield Finding("WARN", "ffmpeg", "not installed: --output files get no sound from the driving video",
                      "install ffmpeg (apt install ffmpeg, brew install ffmpeg, winget install ffmpeg)")


def check_display() -> Iterator[Finding]:
    if platform.system() != "Linux":
        yield Finding("OK", "display", f"{platform.system()} desktop")
    elif os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        yield Finding("OK", "display", os.environ.get("DISPLAY") or os.environ["WAYLAND_DISPLAY"])
    else:
        yield Finding("WARN", "display", "none (DISPLAY and WAYLAND_DISPLAY unset): no preview window",
                      "run with --no-preview; the virtual camera and --output still work")


def check_weights(checkpoint: str | None, expected_md5: str) -> Iterator[Finding]:
    candidates = [Path(checkpoint)] if checkpoint else checkpoint_search_paths()
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        fetch = "python run_live.py --download-weights" + (f" --checkpoint {checkpoint}" if checkpoint else "")
        yield Finding("FAIL", "weights", f"no checkpoint found (looked at: {', '.join(map(str, candidates))})", fetch)
        return
    partial = path.with_name(path.name + ".part")
    if partial.exists():
        yield Finding("WARN", "weights", f"an interrupted download lies at {partial}",
                      "python run_live.py --download-weights resumes it")
    found = file_md5(path)
    size = f"{path.stat().st_size / 2**20:.0f} MiB"
    if found == expected_md5.lower():
        yield Finding("OK", "weights", f"{path} ({size}, md5 verified)")
    elif path.name == DEFAULT_CHECKPOINT_NAME:
        yield Finding("FAIL", "weights", f"{path} ({size}) has md5 {found}, expected {expected_md5}: corrupt or "
                      "incomplete", f"delete it and run: python run_live.py --download-weights --checkpoint {path}")
    else:
        yield Finding("WARN", "weights", f"{path} ({size}, md5 {found}) is not the released {DEFAULT_CHECKPOINT_NAME}",
                      "fine for a checkpoint of your own; pass --weights-md5 to verify it")

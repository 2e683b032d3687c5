"""Frames per second on this machine: model-only and end to end, per stage, against the original pipeline.

    python benchmarks/fps.py --random-weights --device cuda --frames 100 --json gpu.json --chart gpu.png
    python run_live.py --benchmark --random-weights --frames 20
    python benchmarks/fps.py --compare a.json b.json

For every usable backend and precision (eager, compile, onnxruntime, openvino,
openvino-gpu, tensorrt), and for the uncached original-style pipeline as the
baseline, in the same run:

- model-only: keypoints + render of one 256x256 frame (batch 1), on the device;
- end to end: a JPEG-compressed 1280x720 camera frame in (webcams deliver
  MJPEG), a 1280x720 uint8 frame out: decode, then the live tool's own
  :class:`live.processor.FrameProcessor` (framing with face detection,
  keypoints, render, paste-back: the code users run, with its own stage
  timings), then the sink's colour conversion (RGB to I420, as a virtual
  camera takes it).  The uncached baseline runs the original demo's steps
  instead (framing, model, paste-back).

Peak memory is each variant's own, from the start of its timing (its loaded
model included): CUDA's allocator peak on a GPU; on the CPU the process's peak
resident memory (the interpreter and the libraries earlier variants loaded
included), which Linux can restart per variant (elsewhere it is not measured: the
process's lifetime peak would show the largest variant's figure on every later
row).

Warm-up frames are excluded; GPU stages are timed with CUDA events.  With
``--random-weights`` no checkpoint is needed and the cost is identical.  The
camera frames show a face (the astronaut of the test fixture, moving), so
face detection does its real work.  The JSON schema is documented in
``benchmarks/fps_report.py``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.fps_report import (  # noqa: E402
    BASELINE,
    SCHEMA,
    attach_speedups,
    compare_table,
    cpu_name,
    fps_of,
    load_report,
    markdown_table,
    save_chart,
    summarize,
)
from benchmarks.original_pipeline import OriginalStylePipeline  # noqa: E402
from engine import load_model  # noqa: E402
from engine.backends import BACKENDS, backend_class  # noqa: E402
from engine.images import image_to_tensor  # noqa: E402
from engine.motion import make_motion_reference, transfer_motion  # noqa: E402
from engine.weights import find_checkpoint  # noqa: E402
from live.avatars import AvatarLibrary  # noqa: E402
from live.framing import DrivingFramer, FaceDetector, FramedImage, frame_avatar  # noqa: E402
from live.hotkeys import LiveState  # noqa: E402
from live.logs import setup_logging  # noqa: E402
from live.pasteback import PasteBack  # noqa: E402
from live.processor import FrameProcessor  # noqa: E402
from live.status import StatusBoard  # noqa: E402

CAMERA_SIZE = (1280, 720)
FACE_SOURCE = REPO / "tests" / "fixtures" / "fomm-parity-small" / "inputs.npz"


class StageTimer:
    """Times stages of one frame: CUDA events for device work on a GPU, the host clock otherwise."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[str, object, object]] = []
        self.host: dict[str, float] = {}

    def run(self, name: str, function: Callable, *args, on_device: bool = False):
        if self.cuda and on_device:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = function(*args)
            end.record()
            self._pending.append((name, start, end))
            return result
        begin = time.perf_counter()
        result = function(*args)
        self.host[name] = (time.perf_counter() - begin) * 1e3
        return result

    def collect(self) -> dict[str, float]:
        """This frame's milliseconds per stage (waits for the device)."""
        if self._pending:
            torch.cuda.synchronize()
        times = dict(self.host)
        for name, start, end in self._pending:
            times[name] = start.elapsed_time(end)
        self._pending, self.host = [], {}
        return times


def camera_frames(count: int) -> list[bytes]:
    """JPEG-encoded 1280x720 frames of a face turning and nodding (a grey room if the fixture is absent)."""
    width, height = CAMERA_SIZE
    face = None
    if FACE_SOURCE.exists():
        with np.load(FACE_SOURCE) as inputs:
            face = cv2.resize(inputs["source"], (420, 420))
    frames = []
    for t in range(count):
        frame = np.full((height, width, 3), 60, np.uint8)
        if face is not None:
            matrix = cv2.getRotationMatrix2D((210, 210), 8 * np.sin(t / 6), 1.0)
            matrix[:, 2] += (20 * np.sin(t / 9), 10 * np.cos(t / 7))
            frame[150:570, 430:850] = cv2.warpAffine(face, matrix, (420, 420), borderMode=cv2.BORDER_REFLECT)
        frames.append(cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return frames


def avatar_image() -> np.ndarray:
    if FACE_SOURCE.exists():
        with np.load(FACE_SOURCE) as inputs:
            return cv2.resize(inputs["source"], (600, 600))
    return np.full((600, 600, 3), 128, np.uint8)


PEAK_RSS_RESET = Path("/proc/self/clear_refs")  # Linux: writing "5" restarts the process's peak RSS (VmHWM)
PROCESS_STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> bool:
    """Restart the peak-memory count for the next variant: CUDA's allocator peak, or on the CPU the process's peak
    resident set (earlier variants' garbage collected first).  False where that peak cannot be restarted (not
    Linux): the lifetime peak would then be the largest variant's so far, not this one's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    gc.collect()
    try:
        PEAK_RSS_RESET.write_text("5")
    except OSError:
        return False
    return True


def peak_memory_mib(device: torch.device) -> float | None:
    """MiB at most in use since :func:`reset_peak_memory`: CUDA's allocator, or the process's resident set (VmHWM);
    None if the process's peak cannot be read."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        lines = PROCESS_STATUS.read_text().splitlines()
    except OSError:
        return None
    kib = [int(line.split()[1]) for line in lines if line.startswith("VmHWM:")]
    return kib[0] / 1024 if kib else None


@dataclass(frozen=True)
class FramedInputs:
    """The avatar photo and the first camera frame, framed as the live tool frames them: once per run (setup, never
    timed), shared by every variant, whose models all have ``frame_size``."""

    frame_size: tuple[int, int]  # (height, width) of the crops: the models' frame size
    photo: np.ndarray  # the avatar photo, HxWx3 uint8 RGB
    avatar: FramedImage  # the photo's face-centred crop (frame_size, uint8 RGB) and where it lies in the photo
    first_frame: np.ndarray  # the first camera frame, 720x1280x3 uint8 RGB
    first_crop: np.ndarray  # its driving crop, frame_size x 3 uint8 RGB

    def check_fits(self, model) -> None:
        if tuple(model.frame_size) != self.frame_size:
            raise ValueError(f"crops framed for {self.frame_size[1]}x{self.frame_size[0]}, but the model's frame "
                             f"size is {model.frame_size[1]}x{model.frame_size[0]}")


def frame_inputs(frame_size: tuple[int, int], frames: list[bytes]) -> FramedInputs:
    """Face detection on the avatar photo and on the first of ``frames`` (JPEG camera frames) -> their crops."""
    side = frame_size[0]
    photo = avatar_image()
    first_frame = cv2.cvtColor(cv2.imdecode(np.frombuffer(frames[0], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    avatar_detector = FaceDetector(long_range=True)
    avatar = frame_avatar(photo, avatar_detector, side)
    avatar_detector.close()
    detector = FaceDetector(long_range=False)
    first_crop = DrivingFramer(detector, side)(first_frame, 0.0).crop
    detector.close()
    return FramedInputs(tuple(frame_size), photo, avatar, first_frame, first_crop)


def model_only_step(pipeline: str, model, framed: FramedInputs) -> Callable[[], torch.Tensor]:
    """One frame of the per-frame model work of ``pipeline`` ("cached" or the baseline), on the device."""
    framed.check_fits(model)
    make = _baseline_model_only if pipeline == BASELINE else _cached_model_only
    return make(model, framed.avatar.crop, framed.first_crop)


def time_model_only(steps: list[Callable[[], torch.Tensor]], device: torch.device, count: int, warmup: int,
                    label: str) -> list[list[float]]:
    """Milliseconds of each step over ``count`` rounds after ``warmup``; each round runs every step once, in turn,
    so that other work on the machine slows them alike (their ratios hold under a changing load)."""
    timer = StageTimer(device)
    times: list[list[float]] = [[] for _ in steps]
    for index in tqdm(range(warmup + count), desc=f"{label}: model only", leave=False):
        for step, collected in zip(steps, times):
            begin = time.perf_counter()
            timer.run("model", step, on_device=True)
            timing = timer.collect()["model"] if device.type == "cuda" else (time.perf_counter() - begin) * 1e3
            if index >= warmup:
                collected.append(timing)
    return times


def measure(name: str, precision: str, pipeline: str, model, device: torch.device, frames: list[bytes],
            framed: FramedInputs, warmup: int, model_ms: list[float] | None = None) -> dict:
    """Time one variant on ``frames`` (JPEG camera frames, ``framed`` their crops): model-only (unless ``model_ms``
    holds it, timed alternating), then end to end.  ``pipeline`` is "cached" (ours) or the baseline."""
    framed.check_fits(model)
    measures_memory = reset_peak_memory(device)
    if model_ms is None:
        (model_ms,) = time_model_only([model_only_step(pipeline, model, framed)], device, len(frames), warmup,
                                      f"{name} {precision} {pipeline}")
    timer = StageTimer(device)
    run_frame, close = (_baseline_frame(model, framed, timer) if pipeline == BASELINE
                        else _live_frame(model, framed.photo, framed.first_frame))
    stage_ms: dict[str, list[float]] = {}
    totals = []
    sequence = frames[:warmup] + frames  # the warm-up replays the first frames
    try:
        for index, encoded in enumerate(tqdm(sequence, desc=f"{name} {precision} {pipeline}: end to end", leave=False)):
            begin = time.perf_counter()
            bgr = timer.run("decode", cv2.imdecode, np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
            output, stages = run_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index)
            timer.run("sink", cv2.cvtColor, output, cv2.COLOR_RGB2YUV_I420)
            times = {**timer.collect(), **stages}
            total = (time.perf_counter() - begin) * 1e3
            if index >= warmup:
                totals.append(total)
                for stage, value in times.items():
                    stage_ms.setdefault(stage, []).append(value)
    finally:
        close()
    model_summary, total_summary = summarize(model_ms), summarize(totals)
    return {
        "backend": name, "precision": precision, "pipeline": pipeline,
        "model_only": {"fps": fps_of(model_summary), "ms": model_summary},
        "end_to_end": {"fps": fps_of(total_summary), "ms": total_summary,
                       "stages": {stage: summarize(values) for stage, values in stage_ms.items()}},
        "peak_memory_mib": peak_memory_mib(device) if measures_memory else None,
        "speedup": None,
    }


def _live_frame(model, photo: np.ndarray, first_frame: np.ndarray):
    """(run, close): the live tool's FrameProcessor on one camera frame (HxWx3 uint8 RGB) -> (output, its stage
    milliseconds: framing, keypoints, render, compose), calibrated on the first camera frame as a user would."""
    folder = Path(tempfile.mkdtemp(prefix="fps-avatar-"))
    avatar = folder / "avatar.png"
    cv2.imwrite(str(avatar), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    processor = FrameProcessor(model, AvatarLibrary(avatar), StatusBoard(log=io.StringIO()), CAMERA_SIZE)
    state = LiveState()
    processor.process(first_frame, state)
    processor.calibrate()

    def run(frame: np.ndarray, index: int) -> tuple[np.ndarray, dict[str, float]]:
        processed = processor.process(frame, state)
        return processed.output, processed.timings

    def close() -> None:
        processor.close()
        shutil.rmtree(folder, ignore_errors=True)

    return run, close


def _baseline_frame(model, framed: FramedInputs, timer: StageTimer):
    """(run, close): the original demo's per-frame steps, framed and pasted back as the live tool would."""
    pipeline = OriginalStylePipeline(model, framed.avatar.crop)
    paste_back = PasteBack(framed.photo, framed.avatar.square, *CAMERA_SIZE)
    framer = DrivingFramer(FaceDetector(long_range=False), model.frame_size[0])

    def run(frame: np.ndarray, index: int) -> tuple[np.ndarray, dict[str, float]]:
        crop = timer.run("framing", framer, frame, index / 30).crop
        face = timer.run("model", pipeline, crop, on_device=True)
        return timer.run("paste_back", paste_back, face), {}

    return run, framer.detector.close


def _cached_model_only(model, avatar_crop: np.ndarray, reference_crop: np.ndarray) -> Callable[[], torch.Tensor]:
    """Our per-frame work on a device-resident frame: keypoints, motion transfer, render."""
    device = model.device
    state = model.encode_source(image_to_tensor(avatar_crop, model.frame_size, device, "avatar"))
    frame = image_to_tensor(reference_crop, model.frame_size, device, "frame")
    motion = make_motion_reference(state.motion.keypoints, model.detect_keypoints(frame), adapt_scale=True)
    return lambda: model.render(state, transfer_motion(model.detect_keypoints(frame), motion, relative=True))


def _baseline_model_only(model, avatar_crop: np.ndarray, reference_crop: np.ndarray) -> Callable[[], torch.Tensor]:
    """The original demo's per-frame work on a device-resident frame (see OriginalStylePipeline)."""
    pipeline = OriginalStylePipeline(model, avatar_crop)
    frame = image_to_tensor(reference_crop, model.frame_size, model.device, "frame")
    return lambda: pipeline.model_step(frame)


def machine_info(device: torch.device) -> dict:
    cpu = cpu_name()
    info = {"device": str(device), "device_name": f"CPU: {cpu}", "compute_capability": None, "driver": None,
            "clocks": None, "device_memory_gib": None, "cpu": cpu, "cpu_cores": os.cpu_count(),
            "load_average": [round(load, 2) for load in os.getloadavg()]}  # other work on the machine, at the end
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, compute_capability=f"{props.major}.{props.minor}",
                    device_memory_gib=round(props.total_memory / 2**30, 1))
        info.update(_nvidia_smi(device.index or 0))
    return info


def _nvidia_smi(index: int) -> dict:
    if not shutil.which("nvidia-smi"):
        return {}
    query = "driver_version,clocks.sm,clocks.mem,clocks.max.sm"
    result = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return {}
    driver, sm, memory, sm_max = (v.strip() for v in result.stdout.strip().split(","))
    return {"driver": driver, "clocks": {"sm_mhz": int(sm), "memory_mhz": int(memory), "sm_max_mhz": int(sm_max)}}


def software_info() -> dict:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "tensorrt": version("tensorrt"), "onnxruntime": version("onnxruntime"), "openvino": version("openvino"),
            "nncf": version("nncf"), "opencv": cv2.__version__, "mediapipe": version("mediapipe")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fps.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "vox-adv-256.yaml"))
    parser.add_argument("--checkpoint", help="weights to load (default: the downloaded vox-adv-cpk.pth.tar)")
    parser.add_argument("--random-weights", action="store_true", help="no checkpoint: random weights, identical cost")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default="all",
                        help=f"comma-separated, from {sorted(BACKENDS)} (default: every one usable here)")
    parser.add_argument("--frames", type=int, default=50, help="timed frames per measurement (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames first (default: 5)")
    parser.add_argument("--alternate", action="store_true",
                        help="load every variant at once and time model-only frame by frame in turn: ratios that "
                             "hold on a busy machine (each variant's peak memory then includes every loaded model)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown table here")
    parser.add_argument("--chart", type=Path, help="write the stage-latency chart (PNG) here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="compare two reports and exit")
    return parser


def variants(names: list[str], device: torch.device):
    """(backend, precision) for every precision each named backend offers on ``device``; a backend that cannot
    run here is skipped with its reason (stderr)."""
    for name in names:
        backend = backend_class(name)
        reason = backend.unavailable_reason(device)
        if reason:
            print(f"skipping backend {name}: {reason}", file=sys.stderr)
            continue
        for precision in backend.precisions[device.type]:
            yield name, precision


def measure_alternating(args, names: list[str], checkpoint, device: torch.device, frames: list[bytes],
                        framed: FramedInputs, baseline_model) -> list[dict]:
    """Every variant loaded at once, model-only timed frame by frame in turn (see :func:`time_model_only`), then
    each end to end.  Each variant's peak memory is then that of its end-to-end phase, every loaded model included."""
    loaded = [("eager", "float32", BASELINE, baseline_model)]
    for name, precision in variants(names, device):
        try:
            loaded.append((name, precision, "cached",
                           load_model(args.config, checkpoint, device=device, backend=name, precision=precision)))
        except Exception as error:
            print(f"skipping backend {name} {precision}: {type(error).__name__}: {error}", file=sys.stderr)
    steps = [model_only_step(pipeline, model, framed) for _, _, pipeline, model in loaded]
    model_ms = time_model_only(steps, device, len(frames), args.warmup, f"{len(steps)} variants alternating")
    results = []
    for (name, precision, pipeline, model), times in zip(loaded, model_ms):
        try:
            results.append(measure(name, precision, pipeline, model, device, frames, framed, args.warmup,
                                   model_ms=times))
        except Exception as error:
            print(f"skipping backend {name} {precision}: {type(error).__name__}: {error}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.chart and importlib.util.find_spec("matplotlib") is None:
        parser.error('--chart needs matplotlib, which is not installed: pip install -e ".[bench]"')
    if args.compare:
        print(compare_table(load_report(args.compare[0]), load_report(args.compare[1])))
        return 0
    names = sorted(BACKENDS) if args.backends == "all" else [b.strip() for b in args.backends.split(",")]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        print(f"error: unknown backends {unknown}; this version has {sorted(BACKENDS)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    weights = "random" if args.random_weights else str(find_checkpoint(args.checkpoint))
    checkpoint = None if args.random_weights else weights
    frames = camera_frames(args.frames)

    results = []
    baseline_model = load_model(args.config, checkpoint, device=device, fuse_layers=False)
    for network in (baseline_model.kp_detector, baseline_model.generator):  # the original's NCHW layout
        network.to(memory_format=torch.contiguous_format)
    framed = frame_inputs(baseline_model.frame_size, frames)  # every variant loads the same config: one frame size
    if args.alternate:
        results = measure_alternating(args, names, checkpoint, device, frames, framed, baseline_model)
    else:
        results.append(measure("eager", "float32", BASELINE, baseline_model, device, frames, framed, args.warmup))
        del baseline_model
        for name, precision in variants(names, device):
            try:
                model = load_model(args.config, checkpoint, device=device, backend=name, precision=precision)
                results.append(measure(name, precision, "cached", model, device, frames, framed, args.warmup))
            except Exception as error:  # one variant failing (a build, a kernel) leaves the others' figures
                print(f"skipping backend {name} {precision}: {type(error).__name__}: {error}", file=sys.stderr)
            model = None  # free it before the next one loads: peak memory is per variant (see reset_peak_memory)
    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/fps.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine_info(device),
        "software": software_info(),
        "config": Path(args.config).name,
        "weights": weights,
        "frames": args.frames,
        "alternate": args.alternate,
        "warmup": args.warmup,
        "results": attach_speedups(results),
    }
    table = markdown_table(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.chart:
        save_chart(report, args.chart)
    return 0


def run(argv: list[str] | None = None) -> int:
    """:func:`main` as a command (this script, ``run_live.py --benchmark``): the tool's progress lines on the terminal,
    the native libraries' own (about 120 from mediapipe's LiteRT per run) in the tool's log file, as in a live run."""
    if "--compare" not in (argv if argv is not None else sys.argv[1:]):  # reads two reports: nothing to divert or log
        _, why_no_log_file = setup_logging(verbose=False)
        if why_no_log_file:
            print(f"warning: {why_no_log_file}: native libraries' own lines are dropped", file=sys.stderr)
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())

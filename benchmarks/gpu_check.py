"""One prepared check for a CUDA machine: parity and speed of every backend and precision, in a few minutes.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu-check.json
    python benchmarks/gpu_check.py --device cpu --backend eager --frames 3   # a dry run of this script

For each backend usable on the device and each precision it offers, with
random vox-adv-256 weights (the cost of the real ones) unless --checkpoint is
given:

- build it, timed and cold (fresh FOMM_LIVE_HOME, Inductor and Triton caches);
- compare its keypoints and rendered frame with the reference, eager float32
  with TF32 off, on the same inputs and the same encoded source: max abs
  error, keypoints in normalised [-1, 1] units, frames in [0, 1];
- time the per-frame work (keypoints + render, batch 1) as users run it
  (PyTorch's defaults, TF32 convolutions included), in a second thread as the
  live pipeline does: CUDA events on CUDA, wall clock on the CPU; median and
  p95 milliseconds over --frames frames after --warmup, and the first frame in
  that thread on its own (the live tool builds a backend in one thread and
  runs it in another; PyTorch keeps its CUDA-graph state per thread).

One backend failing, whatever the exception, is a row with its error, never
the end of the run; the JSON is rewritten after every row, so a run cut short
by a time limit still leaves what it measured.  Nothing here needs a
webcam or a display.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fps_report import summarize  # noqa: E402
from engine import load_model  # noqa: E402
from engine.backends import BACKENDS, backend_class  # noqa: E402
from engine.motion import make_motion_reference, transfer_motion  # noqa: E402

OPTIONAL_LIBRARIES = ("triton", "onnxruntime", "onnxruntime-gpu", "torch-tensorrt", "tensorrt")


def environment(device: torch.device, config: str, checkpoint: str | None) -> dict:
    """What the numbers depend on: device, torch and CUDA, and which optional libraries are installed."""
    versions = {}
    for library in OPTIONAL_LIBRARIES:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            versions[library] = None
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": where, "torch": torch.__version__, "cuda": torch.version.cuda, "libraries": versions,
            "config": config, "weights": checkpoint or "random"}


@contextlib.contextmanager
def exact_float32():
    """Float32 without TF32, for the reference: PyTorch lets cuDNN run float32 convolutions in TF32 (10 mantissa
    bits, as many as float16) on Ampere and newer unless told not to, which would blur the errors measured.

    torch 2.9 and newer: the per-operation ``fp32_precision`` settings ("ieee"), which also hold where a global
    setting says "tf32"; older torch: the ``allow_tf32`` flags.
    """
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        settings, name, exact = (torch.backends.cudnn.conv, torch.backends.cuda.matmul), "fp32_precision", "ieee"
    else:
        settings, name, exact = (torch.backends.cudnn, torch.backends.cuda.matmul), "allow_tf32", False
    saved = [getattr(setting, name) for setting in settings]
    for setting in settings:
        setattr(setting, name, exact)
    try:
        yield
    finally:
        for setting, value in zip(settings, saved):
            setattr(setting, name, value)


def frame_times(model, state, frame, motion, frames: int, warmup: int) -> list[float]:
    """Milliseconds per frame (keypoints, motion transfer and render), the first ``warmup`` included."""
    cuda = frame.device.type == "cuda"
    times = []
    for _ in range(warmup + frames):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            started = time.perf_counter()
        model.render(state, transfer_motion(model.detect_keypoints(frame), motion, relative=True))
        if cuda:
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            times.append((time.perf_counter() - started) * 1000)
    return times


def frame_times_in_thread(*args) -> list[float]:
    """:func:`frame_times` in a new thread, as the live pipeline's inference thread runs the model."""
    result: dict = {}

    def work():
        try:
            result["times"] = frame_times(*args)
        except BaseException as error:  # handed to the caller's thread
            result["error"] = error

    thread = threading.Thread(target=work, name="inference")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["times"]


def check_backend(name: str, precision: str, args, device, reference: dict) -> dict:
    """One row: build time, errors against eager float32, and per-frame timings."""
    row: dict = {"backend": name, "precision": precision}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)  # the same random weights as the reference
    started = time.perf_counter()
    model = load_model(args.config, args.checkpoint, device=device, backend=name, precision=precision)
    row["build_s"] = round(time.perf_counter() - started, 1)
    state, motion, driving = reference["state"], reference["motion"], reference["driving"]
    keypoints = model.detect_keypoints(driving)
    frame = model.render(state, transfer_motion(keypoints, motion, relative=True))
    row["keypoint_error"] = float((keypoints.value - reference["keypoints"].value).abs().max())
    row["jacobian_error"] = float((keypoints.jacobian - reference["keypoints"].jacobian).abs().max())
    row["frame_error"] = float((frame - reference["frame"]).abs().max())
    times = frame_times_in_thread(model, state, driving, motion, args.frames, args.warmup)
    row["first_frame_in_thread_ms"] = round(times[0], 2)
    summary = summarize(times[args.warmup:])
    row["ms_median"], row["ms_p95"], row["fps"] = summary["p50"], summary["p95"], 1000 / summary["mean"]
    if device.type == "cuda":
        row["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return row


def table(report: dict) -> str:
    where = report["environment"]
    lines = [f"{where['device']}, torch {where['torch']}, {where['config']}, {where['weights']} weights",
             "| backend | precision | build s | max keypoint error | max frame error | first frame ms | ms median | ms p95 "
             "| FPS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['backend']} | {row['precision']} | not usable: {row['error']} |")
        else:
            lines.append(f"| {row['backend']} | {row['precision']} | {row['build_s']} | {row['keypoint_error']:.2e} | "
                         f"{row['frame_error']:.2e} | {row['first_frame_in_thread_ms']:.1f} | {row['ms_median']:.2f} | "
                         f"{row['ms_p95']:.2f} | {row['fps']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vox-adv-256.yaml")
    parser.add_argument("--checkpoint", help="weights to load (default: random weights of --config)")
    parser.add_argument("--device", default="cuda", help="cuda (the point of this script) or cpu (a dry run)")
    parser.add_argument("--backend", action="append", choices=sorted(BACKENDS),
                        help="check only this backend (repeatable; default: all)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, help="JSON report, rewritten after every row")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.warmup < 1:
        parser.error("--frames and --warmup must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as home:  # cold builds: no artifact, kernel or timing cache
        os.environ.update(FOMM_LIVE_HOME=home, TORCHINDUCTOR_CACHE_DIR=str(Path(home) / "inductor"),
                          TRITON_CACHE_DIR=str(Path(home) / "triton"))
        report = check_all(args, device)
    print("\n" + table(report))
    return 0


def check_all(args: argparse.Namespace, device: torch.device) -> dict:
    """The reference, then a row per backend and precision (see the module docstring); the report as written."""
    torch.manual_seed(0)
    model = load_model(args.config, args.checkpoint, device=device)
    height, width = model.frame_size
    generator = torch.Generator().manual_seed(1)
    source, driving, calibration = (torch.rand(1, 3, height, width, generator=generator).to(device) for _ in range(3))
    with exact_float32():
        state = model.encode_source(source)
        motion = make_motion_reference(state.motion.keypoints, model.detect_keypoints(calibration), adapt_scale=True)
        keypoints = model.detect_keypoints(driving)
        reference = {"state": state, "motion": motion, "driving": driving, "keypoints": keypoints,
                     "frame": model.render(state, transfer_motion(keypoints, motion, relative=True))}
    del model

    report = {"environment": environment(device, args.config, args.checkpoint), "frames": args.frames,
              "warmup": args.warmup, "rows": []}
    print(json.dumps(report["environment"]), flush=True)
    for name in args.backend or BACKENDS:
        backend = backend_class(name)
        reason = backend.unavailable_reason(device)
        for precision in backend.precisions.get(device.type, ()) if reason is None else ("-",):
            if reason:
                row = {"backend": name, "precision": precision, "error": reason}
            else:
                try:
                    row = check_backend(name, precision, args, device, reference)
                except Exception as error:  # one backend's failure is a finding, not the end of the run
                    row = {"backend": name, "precision": precision, "error": f"{type(error).__name__}: {error}"[:400]}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(main())

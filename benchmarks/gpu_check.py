"""One prepared check for a CUDA machine: parity and speed of every backend and precision, in a few minutes.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu-check.json

For each backend usable on the GPU and each precision it offers, with random
vox-adv-256 weights (the cost of the real ones): build it (timed, the artifact
cache disabled by a fresh FOMM_LIVE_HOME), then compare its keypoints and
rendered frames with eager float32 on the same inputs (max abs error), and
time the per-frame work (keypoints + render, batch 1) with CUDA events:
median and p95 milliseconds over --frames frames after --warmup.  Prints a
table and writes JSON.  Nothing here needs a checkpoint, a webcam or a display.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import load_model  # noqa: E402
from engine.backends import BACKENDS, BackendUnavailable, backend_class  # noqa: E402
from engine.motion import make_motion_reference, transfer_motion  # noqa: E402


def time_frames(model, state, frame, motion, frames: int, warmup: int) -> list[float]:
    times = []
    for index in range(warmup + frames):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model.render(state, transfer_motion(model.detect_keypoints(frame), motion, relative=True))
        end.record()
        torch.cuda.synchronize()
        if index >= warmup:
            times.append(start.elapsed_time(end))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vox-adv-256.yaml")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    os.environ["FOMM_LIVE_HOME"] = tempfile.mkdtemp(prefix="gpu-check-")  # measure cold builds
    device = torch.device("cuda")
    torch.manual_seed(0)
    reference = load_model(args.config, None, device=device)
    height, width = reference.frame_size
    generator = torch.Generator().manual_seed(1)
    source, driving, calibration = (torch.rand(1, 3, height, width, generator=generator).to(device) for _ in range(3))
    state = reference.encode_source(source)
    motion = make_motion_reference(state.motion.keypoints, reference.detect_keypoints(calibration), adapt_scale=True)
    expected_keypoints = reference.detect_keypoints(driving)
    expected_frame = reference.render(state, transfer_motion(expected_keypoints, motion, relative=True))

    rows = []
    for name in BACKENDS:
        backend = backend_class(name)
        reason = backend.unavailable_reason(device)
        for precision in backend.precisions.get("cuda", ()) if reason is None else ("-",):
            row = {"backend": name, "precision": precision}
            if reason:
                rows.append({**row, "error": reason})
                continue
            try:
                torch.manual_seed(0)
                started = time.perf_counter()
                model = load_model(args.config, None, device=device, backend=name, precision=precision)
                row["build_s"] = round(time.perf_counter() - started, 1)
                keypoints = model.detect_keypoints(driving)
                frame = model.render(state, transfer_motion(keypoints, motion, relative=True))
                row["keypoint_error"] = float((keypoints.value - expected_keypoints.value).abs().max())
                row["frame_error"] = float((frame - expected_frame).abs().max())
                times = time_frames(model, state, driving, motion, args.frames, args.warmup)
                row["ms_median"] = statistics.median(times)
                row["ms_p95"] = sorted(times)[int(0.95 * (len(times) - 1))]
                row["fps"] = 1000 / statistics.mean(times)
                del model
            except (BackendUnavailable, RuntimeError) as error:
                row["error"] = f"{type(error).__name__}: {error}"[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\n{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {args.config}, random weights")
    print("| backend | precision | build s | max keypoint error | max frame error | ms median | ms p95 | FPS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['backend']} | {row['precision']} | not usable: {row['error']} |")
        else:
            print(f"| {row['backend']} | {row['precision']} | {row['build_s']} | {row['keypoint_error']:.2e} | "
                  f"{row['frame_error']:.2e} | {row['ms_median']:.2f} | {row['ms_p95']:.2f} | {row['fps']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                                        "config": args.config, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

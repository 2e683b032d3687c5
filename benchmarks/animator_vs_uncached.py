"""Per-frame time of engine.Animator against the original-style uncached pipeline, side by side.

    python benchmarks/animator_vs_uncached.py --config configs/vox-256.yaml --frames 20 [--backend onnxruntime --backend eager]

All run on the same random weights, the same source and the same driving
frames (uint8 in, uint8 out), alternating frame by frame so that drift in the
machine's speed hits them alike.  Warm-up frames are excluded.  Prints the
median per-frame time of each, the median of the per-frame ratios against
the uncached pipeline, and the largest difference between their outputs
(they compute the same frames).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fps_report import cpu_name  # noqa: E402
from benchmarks.original_pipeline import OriginalStylePipeline  # noqa: E402
from engine import Animator, load_model  # noqa: E402


def machine_description() -> str:
    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vox-256.yaml")
    parser.add_argument("--backend", action="append", dest="backends",
                        help="an Animator backend to time; repeat to time several side by side (default: eager)")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per pipeline")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    backends = args.backends or ["eager"]

    torch.manual_seed(0)
    original = load_model(args.config, None, fuse_layers=False)
    for network in (original.kp_detector, original.generator):  # the original's NCHW layout
        network.to(memory_format=torch.contiguous_format)
    height, width = original.frame_size
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frames = rng.integers(0, 256, (args.warmup + args.frames, height, width, 3), dtype=np.uint8)
    baseline = OriginalStylePipeline(original, source)
    animators = {}
    for backend in backends:
        torch.manual_seed(0)
        animators[backend] = Animator(load_model(args.config, None, backend=backend), source, relative=True, adapt_scale=True)

    original_ms, ours_ms = [], {backend: [] for backend in backends}
    max_difference = dict.fromkeys(backends, 0)
    for index, frame in enumerate(frames):
        start = time.perf_counter()
        original_frame = baseline(frame)
        elapsed = [(time.perf_counter() - start) * 1e3]
        for backend, animator in animators.items():
            start = time.perf_counter()
            ours_frame = animator(frame)
            elapsed.append((time.perf_counter() - start) * 1e3)
            difference = int(np.abs(ours_frame.astype(int) - original_frame.astype(int)).max())
            max_difference[backend] = max(max_difference[backend], difference)
        if index >= args.warmup:
            original_ms.append(elapsed[0])
            for backend, milliseconds in zip(backends, elapsed[1:]):
                ours_ms[backend].append(milliseconds)

    result = {"machine": machine_description(), "config": args.config, "frames": args.frames,
              "uncached_ms_median": statistics.median(original_ms), "backends": {}}
    print(f"machine: {result['machine']}")
    print(f"config {args.config}, random weights, {args.frames} frames after {args.warmup} warm-up, "
          f"the {len(backends) + 1} pipelines alternating frame by frame")
    print(f"original-style uncached pipeline:  {result['uncached_ms_median']:8.1f} ms/frame (median)")
    for backend in backends:
        ratios = [o / a for o, a in zip(original_ms, ours_ms[backend])]
        figures = {"animator_ms_median": statistics.median(ours_ms[backend]), "speedup_median": statistics.median(ratios),
                   "speedup_min": min(ratios), "speedup_max": max(ratios),
                   "max_abs_difference_uint8": max_difference[backend]}
        result["backends"][backend] = figures
        print(f"Animator, {backend + ' backend:':22} {figures['animator_ms_median']:8.1f} ms/frame (median), "
              f"speed-up {figures['speedup_median']:.2f}x (median of per-frame ratios; min {figures['speedup_min']:.2f}x, "
              f"max {figures['speedup_max']:.2f}x), largest output difference {max_difference[backend]} uint8 levels")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

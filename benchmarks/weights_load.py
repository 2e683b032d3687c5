"""Start-up cost of loading the weights: the original .pth.tar against its safetensors copy.

    python benchmarks/weights_load.py --config configs/vox-adv-256.yaml --runs 5

Writes a random-weight checkpoint in the original layout (generator and
kp_detector of the config, as torch.save writes them) to a temporary
directory, then alternates the two loads so that drift hits both alike:
``load_model(..., weights_cache=False)`` (unpickling the .pth.tar) and
``load_model(...)`` reading the safetensors copy made on the first load.
The first, converting load is timed separately.  Prints medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import load_model  # noqa: E402


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vox-adv-256.yaml")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        os.environ["FOMM_LIVE_HOME"] = str(Path(directory) / "home")
        model = load_model(args.config, None, fuse_layers=False)
        checkpoint = Path(directory) / "random.pth.tar"
        torch.save({"generator": model.generator.state_dict(), "kp_detector": model.kp_detector.state_dict()},
                   checkpoint)
        size = checkpoint.stat().st_size / 2**20
        converting = timed(lambda: load_model(args.config, checkpoint))
        pickle_times, safetensors_times = [], []
        for _ in range(args.runs):
            pickle_times.append(timed(lambda: load_model(args.config, checkpoint, weights_cache=False)))
            safetensors_times.append(timed(lambda: load_model(args.config, checkpoint)))
    print(f"checkpoint: {size:.0f} MiB, config {args.config}, {args.runs} runs each, torch {torch.__version__}")
    print(f"first load, converting to safetensors: {converting:6.2f} s")
    print(f"load from .pth.tar (torch.load):       {statistics.median(pickle_times):6.2f} s (median)")
    print(f"load from the safetensors copy:        {statistics.median(safetensors_times):6.2f} s (median)")
    ratios = [p / s for p, s in zip(pickle_times, safetensors_times)]
    print(f"speed-up: {statistics.median(ratios):.2f}x (median of pairs, min {min(ratios):.2f}x, max {max(ratios):.2f}x)")


if __name__ == "__main__":
    main()

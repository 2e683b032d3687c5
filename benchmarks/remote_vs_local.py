"""Rendering on a server over loopback against rendering here, side by side in one run.

    python benchmarks/remote_vs_local.py [--config configs/vox-adv-256.yaml] [--frames 30] [--runs 3] [--json out.json]

A render server (``run_live.py --serve``) is started on 127.0.0.1 with random
weights of the config's architecture (the same file for both sides, so the
server accepts the client's keypoint detector).  The live tool's own
:class:`~live.processor.FrameProcessor` then processes the same 640x480
camera frames (the fixture's portrait moving) into 1280x720 output frames
twice, alternating frame by frame: once with its render stage here, once
with it on the server, waiting for each frame's own square (the order an
offline render keeps).  Per frame it records the time from handing the
camera frame over to having its output frame (framing, keypoints, render,
paste-back; the remote one adds the round trip), and the bytes the client
sent and received.  Medians over ``--runs`` runs; warm-up frames excluded.
Both sides share this machine's cores, as a laptop and a server do not.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.fps_report import cpu_name  # noqa: E402
from engine import load_model  # noqa: E402
from live.avatars import AvatarLibrary  # noqa: E402
from live.hotkeys import LiveState  # noqa: E402
from live.logs import divert_native_stderr  # noqa: E402
from live.processor import FrameProcessor  # noqa: E402
from live.remote.client import RemoteRenderer  # noqa: E402
from live.remote.protocol import keypoint_detector_fingerprint  # noqa: E402
from live.stages.remote_render import RemoteRender  # noqa: E402
from live.status import StatusBoard  # noqa: E402
from tests.live_media import driving_frames, write_avatar  # noqa: E402


def random_checkpoint(config: str, path: Path) -> Path:
    """Random weights of ``config``'s architecture as a .safetensors checkpoint both sides load."""
    torch.manual_seed(0)
    model = load_model(config, None, fuse_layers=False)
    tensors = {f"{name}.{key}": value.contiguous() for name, network in
               (("generator", model.generator), ("kp_detector", model.kp_detector))
               for key, value in network.state_dict().items()}
    save_file(tensors, str(path))
    return path


def start_server(config: str, checkpoint: Path, home: Path, port: int, backend: str) -> tuple[subprocess.Popen, str, str, str]:
    """The server process, its URL, token and certificate fingerprint (read from its paste-able line)."""
    server = subprocess.Popen([sys.executable, str(REPO / "run_live.py"), "--serve", "--config", config,
                               "--checkpoint", str(checkpoint), "--port", str(port), "--backend", backend],
                              env={**os.environ, "FOMM_LIVE_HOME": str(home)}, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    if not line:
        raise SystemExit(f"the server did not start (exit {server.wait()})")
    return (server, re.search(r"--remote (\S+)", line).group(1), re.search(r"FOMM_LIVE_TOKEN=(\S+)", line).group(1),
            re.search(r"--fingerprint (\S+)", line).group(1))


def one_run(model, avatar_folder: Path, frames: list[np.ndarray], warmup: int, server: tuple[str, str, str]) -> dict:
    url, token, fingerprint = server
    client = RemoteRenderer(url, token, fingerprint=fingerprint, model_fingerprint=keypoint_detector_fingerprint(model))
    client.start(timeout=120)
    status = StatusBoard(log=io.StringIO())
    local = FrameProcessor(model, AvatarLibrary(avatar_folder), status, (1280, 720))
    remote = FrameProcessor(model, AvatarLibrary(avatar_folder), status, (1280, 720),
                            render=RemoteRender(client, model, status, in_order=True))
    state = LiveState()
    times = {"local": [], "remote": []}
    bytes_up, bytes_down = [], []
    for index, frame in enumerate(frames):
        for name, processor in (("local", local), ("remote", remote)):
            up, down = client.bytes_up, client.bytes_down
            start = time.perf_counter()
            processor.process(frame, state)
            elapsed = (time.perf_counter() - start) * 1e3
            if index >= warmup:
                times[name].append(elapsed)
                if name == "remote":
                    bytes_up.append(client.bytes_up - up)
                    bytes_down.append(client.bytes_down - down)
    local.close()
    remote.close()  # and the client with it
    added = [r - l for r, l in zip(times["remote"], times["local"])]
    return {
        "local_fps": 1e3 / statistics.median(times["local"]),
        "remote_fps": 1e3 / statistics.median(times["remote"]),
        "local_ms_p50": statistics.median(times["local"]),
        "remote_ms_p50": statistics.median(times["remote"]),
        "added_ms_p50": statistics.median(added),
        "added_ms_p95": float(np.percentile(added, 95)),
        "bytes_up_per_frame": statistics.median(bytes_up),
        "bytes_down_per_frame": statistics.median(bytes_down),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "vox-adv-256.yaml"))
    parser.add_argument("--frames", type=int, default=30, help="timed frames per run and side")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=8777)
    parser.add_argument("--backend", default="onnxruntime", help="the same backend on both sides (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    divert_native_stderr()  # mediapipe's start-up lines

    with tempfile.TemporaryDirectory(prefix="fomm-live-remote-bench-") as scratch:
        scratch = Path(scratch)
        os.environ["FOMM_LIVE_HOME"] = str(scratch / "client-home")
        checkpoint = random_checkpoint(args.config, scratch / "random.safetensors")
        server, url, token, fingerprint = start_server(args.config, checkpoint, scratch / "server-home", args.port,
                                                       args.backend)
        try:
            model = load_model(args.config, checkpoint, backend=args.backend)
            avatars = scratch / "avatars"
            avatars.mkdir()
            write_avatar(avatars / "avatar.png")
            frames = driving_frames(args.warmup + args.frames)
            runs = [one_run(model, avatars, frames, args.warmup, (url, token, fingerprint)) for _ in range(args.runs)]
        finally:
            server.terminate()
            server.wait(30)
    summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    summary["remote_over_local_fps"] = summary["remote_fps"] / summary["local_fps"]
    report = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "config": Path(args.config).stem,
              "backend": model.backend.name, "frames": args.frames, "runs": runs, "median": summary,
              "load_average": os.getloadavg()}
    print(f"| | local | remote (loopback) |\n|---|---:|---:|\n"
          f"| end-to-end FPS | {summary['local_fps']:.2f} | {summary['remote_fps']:.2f} "
          f"({summary['remote_over_local_fps']:.2f}x) |\n"
          f"| ms per frame, p50 | {summary['local_ms_p50']:.1f} | {summary['remote_ms_p50']:.1f} |\n"
          f"| added ms, p50 / p95 | | {summary['added_ms_p50']:.1f} / {summary['added_ms_p95']:.1f} |\n"
          f"| bytes per frame up / down | | {summary['bytes_up_per_frame']:.0f} / {summary['bytes_down_per_frame']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""The live tool rendering on a server: real server and client processes on 127.0.0.1, a video file as the camera.

The client is the ordinary command line with ``--remote``: its ``--output`` is compared frame by frame with a
local render of the same input (they differ only by the JPEG the frames travel as), and it survives the server
being killed and restarted mid-render.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .live_media import MODEL_ARGS, REPO, driving_frames, read_video, write_avatar, write_video
from .test_remote_server import ServerProcess, free_port

CLIENT_ARGS = [*MODEL_ARGS, "--no-preview", "--square"]


def client_command(server: ServerProcess, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "run_live.py"), *CLIENT_ARGS, "--remote", server.url, "--fingerprint",
            server.fingerprint, *args]


def client_env(tmp_path: Path, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, "FOMM_LIVE_HOME": str(tmp_path / "client-home"), "FOMM_LIVE_TOKEN": token}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return {"avatar": write_avatar(folder / "avatar.png"), "driving": write_video(folder / "driving.mp4", driving_frames(12))}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = ServerProcess(tmp_path_factory.mktemp("server") / "home", free_port()).start()
    yield running
    if running.process.poll() is None:
        running.stop()


def test_the_clients_output_matches_a_local_render_frame_by_frame(tmp_path, media, server):
    remote, local = tmp_path / "remote.mp4", tmp_path / "local.mp4"
    args = ["--source", str(media["avatar"]), "--camera", str(media["driving"])]
    client = subprocess.run(client_command(server, *args, "--output", str(remote)), cwd=tmp_path,
                            env=client_env(tmp_path, server.token), capture_output=True, text=True, timeout=300)
    assert client.returncode == 0, client.stderr
    assert "only the avatar and keypoints leave this machine" in client.stderr
    alone = subprocess.run([sys.executable, str(REPO / "run_live.py"), *CLIENT_ARGS, *args, "--output", str(local)],
                           cwd=tmp_path, env=client_env(tmp_path, ""), capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    assert_same_frames(remote, local, 12)


def assert_same_frames(remote: Path, local: Path, count: int) -> None:
    """The client's output video against a local render of the same input: ``count`` frames each, equal up to the
    codecs' loss, none shifted."""
    remote_frames, local_frames = read_video(remote), read_video(local)
    assert len(remote_frames) == len(local_frames) == count
    for index, (a, b) in enumerate(zip(remote_frames, local_frames)):
        difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
        # JPEG at quality 90 on the way back, then both through H.264: a few levels on average, no misplaced frame.
        assert difference.mean() < 3.0 and np.percentile(difference, 99) < 24, f"frame {index}: {difference.mean()}"
    shifted = np.abs(remote_frames[1].astype(np.int16) - local_frames[-1].astype(np.int16)).mean()
    assert shifted > np.abs(remote_frames[1].astype(np.int16) - local_frames[1].astype(np.int16)).mean()


def test_a_wrong_token_is_refused_with_a_clear_message(tmp_path, media, server):
    result = subprocess.run(client_command(server, "--source", str(media["avatar"]), "--camera", str(media["driving"]),
                                           "--output", str(tmp_path / "out.mp4")),
                            cwd=tmp_path, env=client_env(tmp_path, "x" * 43), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr
    assert "token" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_the_client_rides_out_a_server_killed_and_restarted_mid_render(tmp_path, media):
    server = ServerProcess(tmp_path / "server-home", free_port()).start()
    camera = write_video(tmp_path / "long.mp4", driving_frames(60))
    out = tmp_path / "out.mp4"
    client = subprocess.Popen(client_command(server, "--source", str(media["avatar"]), "--camera", str(camera),
                                             "--output", str(out)),
                              cwd=tmp_path, env=client_env(tmp_path, server.token), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        server.wait_for_log(r"session \d+ opened", timeout=180)
        time.sleep(2.0)  # frames flowing
        server.process.kill()
        server.process.wait(10)
        time.sleep(2.0)  # the client notices and retries with growing pauses
        restarted = ServerProcess(server.home, server.port).start()
        _, stderr = client.communicate(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
    try:
        assert client.returncode == 0, stderr
        assert "render server lost" in stderr and "is back" in stderr
        assert len(read_video(out)) == 60, "every frame of the driving video was rendered, in order"
    finally:
        restarted.stop()

"""The live tool end to end, with generated video files as the camera and real file sinks (no webcam, no display)."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from live.avatars import AvatarLibrary
from live.hotkeys import LiveState
from live.processor import FrameProcessor
from live.sinks import loopback_devices
from live.status import StatusBoard

from .live_media import (
    MODEL_ARGS,
    REPO,
    add_tone,
    driving_frames,
    ffmpeg_missing,
    has_audio,
    read_video,
    write_avatar,
    write_video,
)


def run_tool(*args: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["FOMM_LIVE_HOME"] = str(tmp_path / "home")
    return subprocess.run([sys.executable, str(REPO / "run_live.py"), *MODEL_ARGS, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return {
        "avatar": write_avatar(folder / "avatar.png"),
        "driving": write_video(folder / "driving.mp4", driving_frames(24)),
        "empty_room": write_video(folder / "empty.mp4", driving_frames(8, face=False)),
    }


def test_offline_render_writes_every_frame_full_size_and_moving(tmp_path, media):
    out = tmp_path / "out.mp4"
    result = run_tool("--source", str(media["avatar"]), "--camera", str(media["driving"]), "--output", str(out),
                      "--no-preview", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rendering" in result.stderr and "24/24" in result.stderr  # the progress bar
    frames = read_video(out)
    assert len(frames) == 24
    assert frames[0].shape == (720, 1280, 3)
    first = frames[0].astype(np.int16)
    # The small fixture model moves the face little, and the face is a small part of a 720p frame: count the
    # pixels that changed by more than the codec's noise (which leaves a still picture within +-2).
    moved = [int((np.abs(frame.astype(np.int16) - first) > 4).sum()) for frame in frames[1:]]
    assert max(moved) > 300, f"the output does not move: pixels changed per frame {moved}"
    assert not list(tmp_path.glob("*.partial.mp4"))


def test_square_option_sends_the_bare_animated_square(tmp_path, media):
    out = tmp_path / "square.mp4"
    result = run_tool("--source", str(media["avatar"]), "--camera", str(media["driving"]), "--output", str(out),
                      "--no-preview", "--square", "--max-frames", "5", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    frames = read_video(out)
    assert len(frames) == 5 and frames[0].shape == (256, 256, 3)
    changes = [np.abs(frame.astype(np.int16) - frames[0]).mean() for frame in frames[1:]]
    assert max(changes) > 0.3, f"the animated square does not move: mean changes {changes}"


def test_frames_without_a_face_render_with_a_message(tmp_path, media):
    out = tmp_path / "empty.mp4"
    result = run_tool("--source", str(media["avatar"]), "--camera", str(media["empty_room"]), "--output", str(out),
                      "--no-preview", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no face in view: using the centre of the camera image" in result.stderr
    assert len(read_video(out)) == 8


@pytest.mark.skipif(bool(loopback_devices()), reason="this machine has a v4l2loopback device")
def test_missing_virtual_camera_device_is_reported_and_the_run_goes_on(tmp_path, media):
    out = tmp_path / "out.mp4"
    result = run_tool("--source", str(media["avatar"]), "--camera", str(media["driving"]), "--output", str(out),
                      "--no-preview", "--virtual-camera", "--max-frames", "4", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no virtual camera" in result.stderr and "sudo modprobe v4l2loopback" in result.stderr
    assert len(read_video(out)) == 4


@pytest.mark.skipif(ffmpeg_missing(), reason="ffmpeg and ffprobe are not installed")
def test_sound_of_the_driving_video_is_copied(tmp_path, media):
    driving = add_tone(media["driving"], tmp_path / "with_sound.mp4")
    out = tmp_path / "out.mp4"
    result = run_tool("--source", str(media["avatar"]), "--camera", str(driving), "--output", str(out),
                      "--no-preview", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert has_audio(out) and len(read_video(out)) == 24


@pytest.mark.parametrize("args, message", [
    (["--camera", "missing.mp4"], "video file not found: missing.mp4"),
    (["--source", "nowhere.png"], "avatar not found: nowhere.png"),
    ([], "no avatar: pass --source"),
])
def test_bad_inputs_are_one_clear_message(tmp_path, media, args, message):
    defaults = {"--source": str(media["avatar"]), "--camera": str(media["driving"])} if args != [] else {}
    merged = {**defaults, **dict(zip(args[::2], args[1::2]))}
    flat = [part for pair in merged.items() for part in pair]
    result = run_tool(*flat, "--no-preview", tmp_path=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_stops_cleanly_and_keeps_what_was_written(tmp_path):
    camera = write_video(tmp_path / "long.mp4", driving_frames(600))
    out = tmp_path / "out.mp4"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["FOMM_LIVE_HOME"] = str(tmp_path / "home")
    tool = subprocess.Popen([sys.executable, str(REPO / "run_live.py"), *MODEL_ARGS, "--source",
                             str(write_avatar(tmp_path / "avatar.png")), "--camera", str(camera), "--output", str(out),
                             "--no-preview"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*.partial.mp4")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)  # some frames rendered
        tool.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, stderr = tool.communicate(timeout=10)
    finally:
        if tool.poll() is None:
            tool.kill()
    assert tool.returncode == 128 + signal.SIGINT, stderr
    assert time.monotonic() - started < 10.0, "it stops promptly, not after rendering the rest (a loose bound: CI is busy)"
    assert "SIGINT received: finishing the outputs" in stderr and "Traceback" not in stderr
    written = read_video(out)
    assert 0 < len(written) < 600


def test_an_avatar_that_cannot_be_read_keeps_the_current_one(tmp_path, small_model):
    write_avatar(tmp_path / "1-good.png")
    (tmp_path / "2-broken.png").write_bytes(b"not an image")
    log = io.StringIO()
    status = StatusBoard(log=log)
    processor = FrameProcessor(small_model, AvatarLibrary(tmp_path), status, (640, 360))
    frame = driving_frames(1)[0]
    state = LiveState(avatar_count=2)
    first = processor.process(frame, state).output
    switched = processor.process(frame, dataclasses.replace(state, avatar_index=1))
    assert switched.output.shape == first.shape == (360, 640, 3)
    assert processor.avatar.name == "1-good.png"
    assert any("cannot read avatar image" in m and "still showing 1-good.png" in m for m in status.conditions())
    processor.close()

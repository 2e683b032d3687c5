"""Faults a user can cause, each run through the real command line: the run ends with one clear message, the
right exit status, and nothing lost.

Runs that must be refused before the model loads are checked for that too: their output never shows the
"loading" line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from .live_media import MODEL_ARGS, REPO, add_tone, driving_frames, ffmpeg_missing, read_video, write_avatar, write_video

LIBRARY_NOISE = ("[ WARN", "W0000", "INFO: Created TensorFlow Lite", "absl::InitializeLog", "[h264 @", "[mjpeg @")


def tool_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "run_live.py"), *MODEL_ARGS, *args]


def tool_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, "FOMM_LIVE_HOME": str(tmp_path / "home"), **extra}


def run_tool(tmp_path: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(tool_command(*args), cwd=tmp_path, env=tool_env(tmp_path, **env), capture_output=True,
                          text=True, timeout=timeout)


def assert_refused_before_loading(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "loading" not in result.stderr


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return {"avatar": write_avatar(folder / "avatar.png"), "driving": write_video(folder / "driving.mp4", driving_frames(24))}


@contextmanager
def small_filesystem(path: Path, size: str, read_only: bool = False):
    """A tmpfs of ``size`` mounted at ``path``: a disk that fills up, or a read-only one (root only)."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill up ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def decodable_frames(path: Path) -> int:
    return len(read_video(path))


# -- data loss -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_kill_or_a_closing_terminal_finishes_the_video_file(tmp_path, media, number):
    camera = write_video(tmp_path / "long.mp4", driving_frames(600))
    out = tmp_path / "out.mp4"
    tool = subprocess.Popen(tool_command("--source", str(media["avatar"]), "--camera", str(camera), "--output",
                                         str(out), "--no-preview"), cwd=tmp_path, env=tool_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "out.partial.mp4").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)  # frames rendered
        tool.send_signal(number)
        _, stderr = tool.communicate(timeout=20)
    finally:
        if tool.poll() is None:
            tool.kill()
    assert tool.returncode == 128 + number, stderr
    name = signal.Signals(number).name
    assert f"{name} received: finishing the outputs" in stderr and f"stopped by {name}" in stderr
    assert "Traceback" not in stderr
    assert 0 < decodable_frames(out) < 600, "the frames rendered before the signal are in a playable file"
    assert not (tmp_path / "out.partial.mp4").exists()


def test_a_full_disk_stops_the_render_and_keeps_what_was_finished_playable(tmp_path, media):
    # 90 frames of this render make three one-second fragments of about 30 kB each: the disk holds the first.
    camera = write_video(tmp_path / "long.mp4", driving_frames(90))
    with small_filesystem(tmp_path / "small", "48k") as small:
        out = small / "out.mp4"
        result = run_tool(tmp_path, "--source", str(media["avatar"]), "--camera", str(camera), "--output", str(out),
                          "--no-preview")
        assert result.returncode == 1, result.stderr
        assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
        assert "incomplete" in result.stderr or "stopped" in result.stderr
        kept = decodable_frames(out)
        assert 0 < kept < 90, f"{kept} frames decode from what the full disk kept"


def test_an_offline_render_whose_every_frame_fails_exits_non_zero_with_the_traceback_in_the_log(tmp_path, media):
    # The fault is injected into the real command line: every frame's inference raises.
    script = ("import sys; import live.processor as p\n"
              "def fail(self, frame, state): raise RuntimeError('simulated inference failure')\n"
              "p.FrameProcessor.process = fail\n"
              "from live.cli import main; sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "out.mp4"
    result = subprocess.run([sys.executable, "-c", script, *MODEL_ARGS, "--source", str(media["avatar"]), "--camera",
                             str(media["driving"]), "--output", str(out), "--no-preview"],
                            cwd=REPO, env=tool_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "0 of 24 frames written" in result.stderr and "24 frames failed in inference" in result.stderr
    log_file = tmp_path / "home" / "logs" / "fomm-live.log"
    assert f"traceback in {log_file}" in result.stderr and "Traceback" not in result.stderr
    assert "Traceback" in log_file.read_text() and "simulated inference failure" in log_file.read_text()
    assert not out.exists() and not (tmp_path / "out.partial.mp4").exists(), "no empty file is left behind"


@pytest.mark.parametrize("case", ["the driving video", "a folder", "a missing folder", "not mp4"])
def test_an_output_that_cannot_be_written_is_refused_before_loading(tmp_path, media, case):
    driving = tmp_path / "driving.mp4"
    driving.write_bytes(media["driving"].read_bytes())
    (tmp_path / "renders").mkdir()
    output, message = {
        "the driving video": (str(driving), "is the driving video"),
        "a folder": (str(tmp_path / "renders"), "is a folder"),
        "a missing folder": (str(tmp_path / "nowhere" / "out.mp4"), "does not exist"),
        "not mp4": (str(tmp_path / "out.avi"), "expected a file name ending in .mp4"),
    }[case]
    result = run_tool(tmp_path, "--source", str(media["avatar"]), "--camera", str(driving), "--output", output,
                      "--no-preview")
    assert_refused_before_loading(result, message)
    assert driving.read_bytes() == media["driving"].read_bytes(), "the driving video is untouched"
    assert not list(tmp_path.rglob("*.partial.mp4"))


def test_a_read_only_output_folder_is_refused_before_loading(tmp_path, media):
    with small_filesystem(tmp_path / "readonly", "1m", read_only=True) as folder:
        result = run_tool(tmp_path, "--source", str(media["avatar"]), "--camera", str(media["driving"]), "--output",
                          str(folder / "out.mp4"), "--no-preview")
    assert_refused_before_loading(result, "cannot write in")


@pytest.mark.parametrize("case", ["a text file named .png", "a folder whose first image is no image"])
def test_an_avatar_that_is_no_image_is_refused_before_loading(tmp_path, media, case):
    if case == "a text file named .png":
        source = unreadable = tmp_path / "notimg.png"
        source.write_text("these are my notes, not a picture\n")
    else:
        source = tmp_path / "avatars"
        source.mkdir()
        unreadable = source / "1-broken.png"
        unreadable.write_bytes(b"not an image")
        write_avatar(source / "2-good.png")
    # A checkpoint that exists but holds no weights: had the model been loaded, the run would stop on it instead.
    checkpoint = tmp_path / "garbage.pth.tar"
    checkpoint.write_text("not a checkpoint")
    result = run_tool(tmp_path, "--source", str(source), "--camera", str(media["driving"]), "--output",
                      str(tmp_path / "out.mp4"), "--no-preview", "--checkpoint", str(checkpoint))
    assert_refused_before_loading(
        result, f"cannot read avatar image {unreadable} (not an image, or a format OpenCV cannot decode)")
    assert not list(tmp_path.rglob("*.mp4")), "no output file is started"


def test_a_folder_is_checked_only_for_the_avatar_the_run_starts_with(tmp_path, media):
    source = tmp_path / "avatars"
    source.mkdir()
    write_avatar(source / "1-good.png")
    (source / "2-broken.png").write_bytes(b"not an image")
    out = tmp_path / "out.mp4"
    result = run_tool(tmp_path, "--source", str(source), "--camera", str(media["driving"]), "--output", str(out),
                      "--no-preview")
    assert result.returncode == 0, result.stderr
    assert decodable_frames(out) == 24


def corrupt_some_frames(path: Path, frames: list[np.ndarray], damaged: tuple[int, ...]) -> Path:
    """An MJPEG video whose frames ``damaged`` have their JPEG data wiped (the decoder rejects them)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG start markers
    assert len(starts) == len(frames)
    for index in damaged:
        begin, end = starts[index], starts[index + 1]
        data[begin:begin + (end - begin) // 2] = bytes((end - begin) // 2)
    path.write_bytes(bytes(data))
    return path


def test_corrupt_frames_in_the_middle_are_skipped_counted_and_reported(tmp_path, media):
    camera = corrupt_some_frames(tmp_path / "damaged.avi", driving_frames(30), damaged=(10, 11, 20))
    out = tmp_path / "out.mp4"
    result = run_tool(tmp_path, "--source", str(media["avatar"]), "--camera", str(camera), "--output", str(out),
                      "--no-preview", "--square")
    assert result.returncode == 1, result.stderr  # 27 of the 30 frames promised
    assert "27 of 30 frames written" in result.stderr and "3 unreadable frames of the driving video skipped" in result.stderr
    assert decodable_frames(out) == 27
    assert not any(noise in result.stderr for noise in LIBRARY_NOISE), result.stderr


# -- never hang, never spin ----------------------------------------------------------------------------------------

def write_video_without_frames(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height = 64, 64
    return path


@pytest.mark.parametrize("kind", ["zero bytes", "not a video", "no frames"])
@pytest.mark.parametrize("output", [True, False])
def test_a_video_file_that_cannot_be_read_ends_the_run_with_one_message(tmp_path, media, kind, output):
    camera = tmp_path / "camera.mp4"
    if kind == "zero bytes":
        camera.write_bytes(b"")
    elif kind == "not a video":
        camera.write_text("these are my notes, not a video\n" * 50)
    else:
        write_video_without_frames(camera)
    args = ["--source", str(media["avatar"]), "--camera", str(camera), "--no-preview"]
    args += ["--output", str(tmp_path / "out.mp4")] if output else ["--virtual-camera"]
    result = run_tool(tmp_path, *args, timeout=60)
    assert result.returncode == 1, result.stderr
    assert str(camera) in result.stderr and "reconnecting" not in result.stderr and "Traceback" not in result.stderr
    assert "loading" not in result.stderr


def test_a_webcam_that_never_opens_is_reported_with_the_cameras_found(tmp_path, media):
    started = time.monotonic()
    result = run_tool(tmp_path, "--source", str(media["avatar"]), "--camera", "7", timeout=60)
    assert_refused_before_loading(result, "cannot open webcam 7: it never opened. Cameras found on this machine:")
    assert "reconnecting" not in result.stderr
    assert not any(noise in result.stderr for noise in LIBRARY_NOISE), result.stderr
    assert time.monotonic() - started < 30


def test_a_render_with_no_output_at_all_is_refused_before_loading(tmp_path, media):
    result = run_tool(tmp_path, "--source", str(media["avatar"]), "--camera", str(media["driving"]), "--no-preview")
    assert_refused_before_loading(result, "nothing to send the frames to")


def test_ctrl_c_during_start_up_says_so_without_a_traceback(tmp_path, media):
    tool = subprocess.Popen(tool_command("--source", str(media["avatar"]), "--camera", str(media["driving"]),
                                         "--output", str(tmp_path / "out.mp4"), "--no-preview"),
                            cwd=tmp_path, env=tool_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "loading" not in line and time.monotonic() < deadline:
            line = tool.stderr.readline()
        assert "loading" in line, "start-up says what it is doing"
        tool.send_signal(signal.SIGINT)
        _, rest = tool.communicate(timeout=30)
    finally:
        if tool.poll() is None:
            tool.kill()
    assert tool.returncode == 130, rest
    assert "SIGINT during start-up" in rest and "Traceback" not in rest
    assert not list(tmp_path.glob("*.mp4"))


# -- the video file ------------------------------------------------------------------------------------------------

def test_the_output_is_h264_and_the_terminal_shows_only_the_tools_own_lines(tmp_path, media):
    out = tmp_path / "out.mp4"
    result = run_tool(tmp_path, "--source", str(media["avatar"]), "--camera", str(media["driving"]), "--output",
                      str(out), "--no-preview", "--max-frames", "6")
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert decodable_frames(out) == 6
    assert not any(noise in result.stderr for noise in LIBRARY_NOISE), result.stderr


@pytest.mark.skipif(ffmpeg_missing(), reason="ffmpeg is not installed (needed to make a driving video with sound)")
def test_a_render_whose_sound_cannot_be_copied_says_so(tmp_path, media):
    driving = add_tone(media["driving"], tmp_path / "with_sound.mp4")
    bin_without_ffmpeg = tmp_path / "bin"
    bin_without_ffmpeg.mkdir()
    (bin_without_ffmpeg / "python").symlink_to(sys.executable)
    result = run_tool(tmp_path, "--source", str(media["avatar"]), "--camera", str(driving), "--output",
                      str(tmp_path / "out.mp4"), "--no-preview", "--max-frames", "4", PATH=str(bin_without_ffmpeg))
    assert result.returncode == 0, result.stderr
    assert "was not copied" in result.stderr and "ffmpeg is not installed" in result.stderr


def test_a_failed_start_prints_one_line_and_logs_the_whole_story(tmp_path, media):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e \".[openvino]\")")
    from engine.backends.openvino import intel_gpu_name

    if intel_gpu_name() is not None:
        pytest.skip("OpenVINO finds an Intel GPU here: --backend openvino-gpu would start")
    result = run_tool(tmp_path, "--source", str(media["avatar"]), "--camera", str(media["driving"]), "--output",
                      str(tmp_path / "out.mp4"), "--no-preview", "--backend", "openvino-gpu")
    assert result.returncode == 1, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "OpenVINO finds no Intel GPU here" in error and "Traceback" not in result.stderr
    log = (tmp_path / "home" / "logs" / "fomm-live.log").read_text()
    assert "start-up failed" in log and "Traceback" in log and "BackendUnavailable" in log

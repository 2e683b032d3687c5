"""The preview window path on a virtual display (Xvfb), driven by real key presses (xdotool)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from .live_media import MODEL_ARGS, REPO, driving_frames, write_avatar, write_video

pytestmark = pytest.mark.skipif(
    shutil.which("Xvfb") is None or shutil.which("xdotool") is None,
    reason="Xvfb and xdotool are needed (apt-get install xvfb xdotool)",
)


@pytest.fixture()
def display():
    number = 90 + os.getpid() % 9
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    yield f":{number}"
    server.terminate()
    server.wait(timeout=5)


def xdotool(display: str, *args: str) -> str:
    return subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, capture_output=True, text=True,
                          timeout=30).stdout.strip()


def wait_for(log_path, pattern: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log_path.read_text()):
            return
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared in the log:\n{log_path.read_text()}")


def test_keys_recalibrate_switch_avatar_and_quit(tmp_path, display):
    avatars = tmp_path / "avatars"
    avatars.mkdir()
    write_avatar(avatars / "1-first.png")
    write_avatar(avatars / "2-second.png", size=(600, 600))
    camera = write_video(tmp_path / "camera.mp4", driving_frames(1800))  # a minute at 30 FPS: outlives the test
    log_path = tmp_path / "log.txt"
    env = {**os.environ, "DISPLAY": display, "FOMM_LIVE_HOME": str(tmp_path / "home")}
    with open(log_path, "w") as log:
        tool = subprocess.Popen([sys.executable, str(REPO / "run_live.py"), *MODEL_ARGS, "--source", str(avatars),
                                 "--camera", str(camera), "--no-virtual-camera"],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(log_path, r"avatar 1/2: 1-first\.png")
        window = xdotool(display, "search", "--sync", "--name", "fomm-live").splitlines()[0]
        time.sleep(1.0)  # a few frames through the pipeline
        xdotool(display, "windowfocus", "--sync", window)
        xdotool(display, "key", "x")
        wait_for(log_path, r"calibrated on the current pose")
        xdotool(display, "key", "2")
        wait_for(log_path, r"avatar 2/2: 2-second\.png")
        xdotool(display, "key", "Escape")
        started = time.monotonic()
        assert tool.wait(timeout=15) == 0
    finally:
        if tool.poll() is None:
            tool.kill()
    log = log_path.read_text()
    assert "key: recalibrate" in log and "key: select_avatar 2" in log and "key: quit" in log
    quit_at = float(re.search(r"\[\s*([\d.]+)s\] key: quit", log).group(1))
    done_at = float(re.search(r"\[\s*([\d.]+)s\] quit: \d+ frames written", log).group(1))
    assert done_at - quit_at < 1.0, "shutdown took longer than a second"
    assert time.monotonic() - started < 10
    assert "Traceback" not in log


def test_global_hotkeys_work_while_another_window_has_the_focus(tmp_path, display):
    """No preview window at all: Ctrl+Alt+<key> reaches the tool only through the global listener."""
    if importlib.util.find_spec("pynput") is None:  # not imported here: pynput wants the X display at import
        pytest.skip('--global-hotkeys needs pynput: pip install -e ".[hotkeys]"')
    camera = write_video(tmp_path / "camera.mp4", driving_frames(900))
    log_path = tmp_path / "log.txt"
    env = {**os.environ, "DISPLAY": display, "FOMM_LIVE_HOME": str(tmp_path / "home")}
    with open(log_path, "w") as log:
        tool = subprocess.Popen([sys.executable, str(REPO / "run_live.py"), *MODEL_ARGS, "--source",
                                 str(write_avatar(tmp_path / "avatar.png")), "--camera", str(camera), "--no-preview",
                                 "--global-hotkeys", "--output", str(tmp_path / "out.mp4")],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(log_path, r"global hotkeys: Ctrl\+Alt")
        wait_for(log_path, r"rendering: +\d+%.*[1-9]\d*/900")
        xdotool(display, "key", "ctrl+alt+x")
        wait_for(log_path, r"calibrated on the current pose")
        xdotool(display, "key", "ctrl+alt+q")
        assert tool.wait(timeout=15) == 0
    finally:
        if tool.poll() is None:
            tool.kill()
    assert log_path.read_text().count("key: recalibrate") == 1

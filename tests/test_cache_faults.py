"""A cache that cannot be used never stops a good checkpoint from loading: it loads directly, with one warning.

Tests run as root here, and chmod does not stop root from writing: an unwritable
cache is made with a cache path under a regular file (ENOTDIR), a directory
the kernel refuses to anyone (/sys: EPERM or EACCES), and a file size limit
(RLIMIT_FSIZE: the write fails with EFBIG, as it would with ENOSPC on a full disk).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import engine.weights_cache
from engine import Animator, load_model

from .conftest import SMALL_PARITY_DIR
from .live_media import REPO, driving_frames, read_video, write_avatar, write_video

CONFIG = SMALL_PARITY_DIR / "config.yaml"


@pytest.fixture()
def checkpoint(tmp_path):
    path = tmp_path / "vox.pth.tar"
    shutil.copy(SMALL_PARITY_DIR / "checkpoint.pth.tar", path)
    return path


@pytest.fixture(scope="module")
def reference(small_inputs):
    model = load_model(CONFIG, SMALL_PARITY_DIR / "checkpoint.pth.tar", weights_cache=False)
    return frames(model, small_inputs)


def frames(model, inputs) -> np.ndarray:
    animator = Animator(model, inputs["source"])
    return np.stack([animator(frame) for frame in inputs["driving"]])


def regular_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


def cache_off_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "weights cache off" in r.getMessage()]


def test_cache_under_a_regular_file_loads_the_checkpoint_directly(tmp_path, monkeypatch, checkpoint, small_inputs,
                                                                  reference, caplog):
    monkeypatch.setenv("FOMM_LIVE_HOME", str(regular_file(tmp_path) / "home"))
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(frames(load_model(CONFIG, checkpoint), small_inputs), reference)
    [warning] = cache_off_warnings(caplog)
    assert "Not a directory" in warning and "loading the checkpoint directly" in warning


def test_cache_in_a_directory_nobody_may_write_loads_the_checkpoint_directly(monkeypatch, checkpoint, small_inputs,
                                                                           reference, caplog):
    home = Path("/sys/fomm-live-test-home")
    if os.path.exists(home) or _can_create(home):
        pytest.skip("/sys accepts new entries here: no directory refuses writes to root on this machine")
    monkeypatch.setenv("FOMM_LIVE_HOME", str(home))
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(frames(load_model(CONFIG, checkpoint), small_inputs), reference)
    [warning] = cache_off_warnings(caplog)
    assert "cannot write /sys/fomm-live-test-home" in warning
    assert any(os.strerror(code) in warning for code in (errno.EACCES, errno.EPERM, errno.EROFS)), warning


def _can_create(directory: Path) -> bool:
    try:
        directory.mkdir()
    except OSError:
        return False
    directory.rmdir()
    return True


def test_checkpoint_the_hashing_step_cannot_read_loads_directly(tmp_path, monkeypatch, checkpoint, small_inputs,
                                                              reference, caplog):
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))

    def failing_disk(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
    monkeypatch.setattr(engine.weights_cache, "file_sha256", failing_disk)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(frames(load_model(CONFIG, checkpoint), small_inputs), reference)
    [warning] = cache_off_warnings(caplog)
    assert f"cannot read {checkpoint.resolve()} to compute its sha256: Input/output error" in warning
    assert not list((tmp_path / "home").rglob("*.safetensors"))


def limit_file_size(limit: int):
    """preexec_fn: files may not grow past ``limit`` bytes; a write beyond fails with EFBIG instead of a signal."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_while_writing_the_copy_loads_directly_and_leaves_nothing(tmp_path, checkpoint, reference):
    """The 8 MB copy cannot be written under a 2 MB file size limit (EFBIG, like ENOSPC on a full disk)."""
    home = tmp_path / "home"
    script = textwrap.dedent(f"""
        import numpy as np
        from engine import Animator, load_model
        model = load_model({str(CONFIG)!r}, {str(checkpoint)!r})
        with np.load({str(SMALL_PARITY_DIR / "inputs.npz")!r}) as inputs:
            animator = Animator(model, inputs["source"])
            np.save({str(tmp_path / "frames.npy")!r}, np.stack([animator(frame) for frame in inputs["driving"]]))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "FOMM_LIVE_HOME": str(home)},
                            preexec_fn=limit_file_size(2 * 2**20), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "weights cache off: cannot write" in result.stderr and "File too large" in result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "frames.npy"), reference)
    assert sorted(p.name for p in (home / "safetensors").iterdir()) == []  # no entry, no temporary file


def test_live_tool_renders_with_an_unusable_data_directory(tmp_path):
    """run_live.py with FOMM_LIVE_HOME under a regular file: the weights load directly and the render completes."""
    avatar = write_avatar(tmp_path / "avatar.png")
    driving = write_video(tmp_path / "driving.mp4", driving_frames(4))
    out = tmp_path / "out.mp4"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["FOMM_LIVE_HOME"] = str(regular_file(tmp_path) / "home")
    result = subprocess.run(
        [sys.executable, str(REPO / "run_live.py"), "--config", str(CONFIG), "--checkpoint",
         str(SMALL_PARITY_DIR / "checkpoint.pth.tar"), "--backend", "eager", "--source", str(avatar),
         "--camera", str(driving), "--output", str(out), "--no-preview", "--square"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "weights cache off" in result.stderr and "Not a directory" in result.stderr
    assert len(read_video(out)) == 4

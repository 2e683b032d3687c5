"""run_live.py's first-run behaviour: the doctor, and the message when no weights are found."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import config_path

REPO = Path(__file__).resolve().parent.parent
TOPICS = ["python", "packages", "gpu", "backend eager (cpu)", "cache", "cameras", "virtual camera device", "display",
          "video output", "ffmpeg", "weights"]
LINE = re.compile(r"^(OK  |WARN|FAIL) (?P<topic>[^:]+): (?P<detail>.+?)(  -> (?P<fix>.+))?$")


def run_tool(*args: str, home: Path, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["FOMM_LIVE_HOME"] = str(home)
    env.update(extra_env)
    return subprocess.run([sys.executable, str(REPO / "run_live.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def doctor_lines(result: subprocess.CompletedProcess) -> dict[str, list[re.Match]]:
    lines = [line for line in result.stdout.splitlines() if line and not line.endswith(("found.", "All set."))]
    matches = {}
    for line in lines:
        match = LINE.match(line)
        assert match, f"doctor line is neither OK nor a problem with its fix: {line!r}"
        if not line.startswith("OK"):
            assert match["fix"], f"problem without a fix: {line!r}"
        matches.setdefault(match["topic"], []).append(match)
    return matches


def test_doctor_reports_every_topic_on_this_machine(tmp_path):
    result = run_tool("--doctor", home=tmp_path / "home", cwd=tmp_path)
    lines = doctor_lines(result)
    for topic in TOPICS:
        assert topic in lines, f"no line about {topic}"
    assert result.returncode == 1  # no weights here
    weights = lines["weights"][0]
    assert weights[0].startswith("FAIL") and "no checkpoint found" in weights["detail"]
    assert weights["fix"] == "python run_live.py --download-weights"
    display = lines["display"][0]
    assert display[0].startswith("WARN") and "--no-preview" in display["fix"]
    loopback_present = any(Path("/sys/devices/virtual/video4linux").glob("video*"))
    device = lines["virtual camera device"][0]
    if loopback_present:
        assert device[0].startswith("OK")
    else:
        assert device[0].startswith("FAIL") and "modprobe v4l2loopback" in device["fix"]
    python = lines["python"][0]
    assert python[0].startswith("OK") and sys.version.split()[0] in python["detail"]


def test_doctor_checks_h264_and_says_what_a_missing_ffmpeg_costs(tmp_path):
    with_ffmpeg = doctor_lines(run_tool("--doctor", home=tmp_path / "home", cwd=tmp_path))
    assert with_ffmpeg["video output"][0][0].startswith("OK") and "H.264" in with_ffmpeg["video output"][0]["detail"]
    no_ffmpeg = tmp_path / "bin"
    no_ffmpeg.mkdir()
    lines = doctor_lines(run_tool("--doctor", home=tmp_path / "home", cwd=tmp_path, PATH=str(no_ffmpeg)))
    ffmpeg = lines["ffmpeg"][0]
    assert ffmpeg[0].startswith("WARN") and "no sound" in ffmpeg["detail"] and "apt install ffmpeg" in ffmpeg["fix"]


def test_doctor_verifies_the_weights(tmp_path):
    weights = tmp_path / "vox-adv-cpk.pth.tar"
    weights.write_bytes(b"pretend weights")
    md5 = hashlib.md5(b"pretend weights").hexdigest()
    good = doctor_lines(run_tool("--doctor", "--checkpoint", str(weights), "--weights-md5", md5,
                                 home=tmp_path / "home", cwd=tmp_path))["weights"]
    assert good[0][0].startswith("OK") and "md5 verified" in good[0]["detail"]
    bad = doctor_lines(run_tool("--doctor", "--checkpoint", str(weights), home=tmp_path / "home", cwd=tmp_path))
    line = bad["weights"][0]
    assert line[0].startswith("FAIL") and "corrupt or incomplete" in line["detail"]
    assert "--download-weights" in line["fix"]


def inputs_of_a_first_run(folder: Path) -> list[str]:
    """An avatar and a driving video: everything a first run needs but the weights."""
    from .live_media import driving_frames, write_avatar, write_video

    return ["--source", str(write_avatar(folder / "avatar.png")), "--camera",
            str(write_video(folder / "driving.mp4", driving_frames(2))), "--no-preview", "--output", str(folder / "out.mp4")]


def test_missing_weights_is_one_message_not_a_traceback(tmp_path):
    home = tmp_path / "home"
    result = run_tool(*inputs_of_a_first_run(tmp_path), home=home, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert str(home / "weights" / "vox-adv-cpk.pth.tar") in message
    assert str(tmp_path / "vox-adv-cpk.pth.tar") in message
    assert "python run_live.py --download-weights" in message


def test_missing_explicit_weights_names_the_path(tmp_path):
    result = run_tool("--checkpoint", str(tmp_path / "mine.pth.tar"), *inputs_of_a_first_run(tmp_path),
                      home=tmp_path / "home", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"looked at: {tmp_path / 'mine.pth.tar'}" in result.stderr


def test_doctor_counts_the_artifacts_the_backends_built_and_nothing_else(tmp_path, monkeypatch):
    from engine.backends.artifacts import build_atomically
    from live.doctor import check_cache

    home = tmp_path / "home"
    monkeypatch.setenv("FOMM_LIVE_HOME", str(home))
    mebibyte = b"x" * 2**20
    counted = [home / "safetensors" / "w.safetensors",
               home / "compiled" / "onnxruntime-tensorrt" / "TensorrtExecutionProvider_graph_3.engine"]
    for path in counted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mebibyte)
    for name in ("onnx-render-1.onnx", "tensorrt-render-2.pt2"):  # built as the backends build them, digest and all
        build_atomically(home / "compiled" / name, lambda temporary: temporary.write_bytes(mebibyte))
    not_artifacts = ["tensorrt-timing-cache.bin", ".onnx-render-9-abc.tmp.onnx", "onnx-keypoints-4.onnx"]
    for name in not_artifacts:  # a timing cache, a build cut short, an entry whose digest is gone (rebuilt on use)
        (home / "compiled" / name).write_bytes(mebibyte)
    finding, limit = check_cache()
    assert finding.status == "OK"
    assert (limit.status, limit.detail) == ("OK", "compiled models are kept under 4 GiB, the least recently used "
                                                  "removed first (FOMM_LIVE_CACHE_GB)")
    # From the set-up: 1 copy; 2 built artifacts and 1 provider engine; 4 files of 1 MiB counted.
    assert "1 safetensors weight copies, 3 compiled artifacts (onnx, onnxruntime-tensorrt, tensorrt), 4 MiB" \
        in finding.detail, finding.detail


def test_doctor_fails_a_cache_limit_that_is_not_a_number(tmp_path, monkeypatch):
    from live.doctor import check_cache

    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FOMM_LIVE_CACHE_GB", "4GB")
    limit = [finding for finding in check_cache() if finding.topic == "cache limit"][0]
    assert limit.status == "FAIL" and "FOMM_LIVE_CACHE_GB must be a positive number of gigabytes" in limit.detail
    assert "found '4GB'" in limit.detail and limit.fix == "unset FOMM_LIVE_CACHE_GB (4 GiB) or set it to a number, e.g. 10"


def test_doctor_names_a_remembered_tensorrt_failure_and_how_to_retry(tmp_path, monkeypatch):
    from live.doctor import check_cache

    home = tmp_path / "home"
    monkeypatch.setenv("FOMM_LIVE_HOME", str(home))
    marker = home / "compiled" / "tensorrt-render-2.failed"
    marker.parent.mkdir(parents=True)
    marker.write_text("RuntimeError: no converter for aten.bogus\n")
    ok, _, warning = check_cache()
    assert "0 compiled artifacts" in ok.detail
    assert warning.status == "WARN" and "RuntimeError: no converter for aten.bogus" in warning.detail
    assert warning.fix == f"delete {marker} to try again"


def test_doctor_shows_the_int8_quality_figures_stored_beside_the_models(tmp_path, monkeypatch):
    import json

    from live.doctor import check_cache

    home = tmp_path / "home"
    monkeypatch.setenv("FOMM_LIVE_HOME", str(home))
    (home / "compiled").mkdir(parents=True)
    figures = {"held_out_frames": 8, "worst_psnr_db": 41.5, "max_keypoint_error": 0.0, "ms_per_frame": 130.0}
    (home / "compiled" / "openvino-render-a.blob.quality.json").write_text(json.dumps(figures))
    (home / "compiled" / "openvino-render-b.blob.quality.json").write_text(json.dumps({**figures, "worst_psnr_db": 21.0}))
    lines = [finding for finding in check_cache() if finding.topic == "int8 quality"]
    assert sorted(line.status for line in lines) == ["OK", "WARN"]
    passed = next(line for line in lines if line.status == "OK")
    assert "worst PSNR 41.5 dB" in passed.detail and "8 held-out face frames" in passed.detail
    refused = next(line for line in lines if line.status == "WARN")
    assert "21.0 dB" in refused.detail and "refused" in refused.detail and refused.fix


@pytest.mark.parametrize("mode", [["--serve"], []], ids=["server", "live tool"])
def test_the_weights_looked_for_are_those_of_the_config_named(tmp_path, mode):
    # The server and the live tool find a model's checkpoint the same way: --config vox-256 looks for vox-256's.
    live_args = [] if mode else inputs_of_a_first_run(tmp_path)
    result = run_tool(*mode, "--config", "vox-256", *live_args, home=tmp_path / "home", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(tmp_path / "home" / "weights" / "vox-cpk.pth.tar") in result.stderr
    assert str(tmp_path / "home" / "weights" / "vox-adv-cpk.pth.tar") not in result.stderr
    custom = tmp_path / "mine.yaml"
    custom.write_text(config_path("vox-256").read_text())
    result = run_tool(*mode, "--config", str(custom), *live_args, home=tmp_path / "home", cwd=tmp_path)
    assert result.returncode == 1 and f"--config {custom} is not a released model" in result.stderr, result.stderr


def test_the_installed_command_runs_from_any_directory_benchmark_included(tmp_path):
    command = Path(sys.executable).parent / ("fomm-live.exe" if os.name == "nt" else "fomm-live")
    if not command.exists():
        pytest.skip(f"the package is not installed in this environment ({command} is missing): pip install -e .")
    helped = subprocess.run([str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: fomm-live"), helped.stderr
    report = REPO / "benchmarks" / "results" / "cpu-intel-xeon-amx-2core.json"
    compared = subprocess.run([str(command), "--benchmark", "--compare", str(report), str(report)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0 and "| openvino int8 |" in compared.stdout, compared.stderr

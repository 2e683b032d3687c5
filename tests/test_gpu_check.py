"""benchmarks/gpu_check.py, run on the CPU: the script a GPU session gets one try at must work before it gets there."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check

from .conftest import SMALL_PARITY_DIR

FIXTURE_ARGS = ["--device", "cpu", "--config", str(SMALL_PARITY_DIR / "config.yaml"),
                "--checkpoint", str(SMALL_PARITY_DIR / "checkpoint.pth.tar"), "--frames", "2", "--warmup", "1"]


@pytest.fixture(autouse=True)
def _restore_cache_variables(monkeypatch, tmp_path):
    """gpu_check points these at a fresh directory for cold builds; the rest of the test run keeps its own."""
    for name in ("FOMM_LIVE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name))


def test_dry_run_checks_parity_and_times_each_backend_in_a_thread(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main([*FIXTURE_ARGS, "--backend", "eager", "--backend", "onnxruntime", "--backend", "tensorrt",
                           "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["weights"].endswith("checkpoint.pth.tar")
    rows = {row["backend"]: row for row in report["rows"]}
    assert list(rows) == ["eager", "onnxruntime", "tensorrt"]
    assert rows["eager"]["keypoint_error"] == 0 and rows["eager"]["frame_error"] == 0
    assert rows["onnxruntime"]["keypoint_error"] < 1e-4 and rows["onnxruntime"]["frame_error"] < 1e-4
    for row in (rows["eager"], rows["onnxruntime"]):
        assert 0 < row["ms_median"] <= row["ms_p95"] and row["first_frame_in_thread_ms"] > 0
    assert rows["tensorrt"] == {"backend": "tensorrt", "precision": "-", "error": "runs only on cuda"}
    assert "| onnxruntime | float32 |" in capsys.readouterr().out


def test_a_backend_that_breaks_is_a_row_and_the_run_goes_on(tmp_path, monkeypatch):
    original = gpu_check.check_backend

    def break_eager(name, *args):
        if name == "eager":
            raise AssertionError("cudagraph trees: accessing an overwritten output")
        return original(name, *args)

    monkeypatch.setattr(gpu_check, "check_backend", break_eager)
    out = tmp_path / "check.json"
    assert gpu_check.main([*FIXTURE_ARGS, "--backend", "eager", "--backend", "onnxruntime", "--out", str(out)]) == 0
    eager, onnxruntime = json.loads(out.read_text())["rows"]
    assert eager["error"] == "AssertionError: cudagraph trees: accessing an overwritten output"
    assert onnxruntime["frame_error"] < 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the refusal cannot be seen here")
def test_refuses_cuda_without_a_gpu(capsys):
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


def test_exact_float32_turns_tf32_off_and_restores_the_settings():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = "tf32"  # as a user might have it
    try:
        with gpu_check.exact_float32():
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", before[1])
    finally:
        conv.fp32_precision, matmul.fp32_precision = before

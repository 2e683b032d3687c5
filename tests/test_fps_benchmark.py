"""The FPS benchmark: its report format, the baseline and the speed-up ratios, and a tiny run on the CPU."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from benchmarks import fps
from benchmarks.fps import main as run_benchmark
from benchmarks.fps_report import (
    BASELINE,
    SCHEMA,
    attach_speedups,
    compare_table,
    fps_of,
    load_report,
    markdown_table,
    summarize,
)

from .conftest import SMALL_PARITY_DIR
from .live_media import REPO


def result(pipeline: str, model_ms: float, e2e_ms: float, backend: str = "eager") -> dict:
    def timing(ms: float) -> dict:
        return {"p50": ms, "p95": ms, "p99": ms, "mean": ms}

    stages = {"model": timing(model_ms)} if pipeline == BASELINE else {"keypoints": timing(1.0), "render": timing(model_ms - 1)}
    return {"backend": backend, "precision": "float32", "pipeline": pipeline,
            "model_only": {"fps": 1000 / model_ms, "ms": timing(model_ms)},
            "end_to_end": {"fps": 1000 / e2e_ms, "ms": timing(e2e_ms), "stages": {"decode": timing(2.0), **stages}},
            "peak_memory_mib": 100.0, "speedup": None}


def report(results: list[dict], device_name: str = "Test GPU") -> dict:
    return {"schema": SCHEMA, "created": "2026-11-30T00:00:00+00:00", "command": "python benchmarks/fps.py",
            "machine": {"device": "cuda:0", "device_name": device_name, "compute_capability": "9.0"},
            "software": {"torch": "2.13.0"}, "config": "vox-adv-256.yaml", "weights": "random", "frames": 10,
            "warmup": 2, "results": results}


def test_summary_percentiles_and_fps():
    summary = summarize([float(v) for v in range(1, 101)])
    assert summary["p50"] == pytest.approx(50.5) and summary["p95"] == pytest.approx(95.05)
    assert summary["p99"] == pytest.approx(99.01) and summary["mean"] == pytest.approx(50.5)
    assert fps_of({"mean": 40.0}) == 25.0
    with pytest.raises(ValueError):
        summarize([])


def test_speedups_are_fps_ratios_against_the_one_baseline():
    results = attach_speedups([result(BASELINE, 100.0, 125.0), result("cached", 40.0, 50.0)])
    assert results[0]["speedup"] is None
    assert results[1]["speedup"] == {"model_only": pytest.approx(2.5), "end_to_end": pytest.approx(2.5)}
    with pytest.raises(ValueError, match="exactly one"):
        attach_speedups([result("cached", 40.0, 50.0)])


def test_markdown_table_has_a_row_per_variant():
    table = markdown_table(report(attach_speedups([result(BASELINE, 100.0, 125.0), result("cached", 40.0, 50.0)])))
    lines = table.splitlines()
    assert lines[0].startswith("**Test GPU (sm 9.0)**")
    assert "| variant | model-only FPS | end-to-end FPS |" in table
    assert "| eager float32 (uncached original) | 10.00 | 8.00 | baseline |" in table
    assert "| eager float32 | 25.00 | 20.00 | 2.50x, 2.50x |" in table
    assert "| speed-up over the uncached original: model-only, end-to-end |" in lines[2]
    assert lines[2].endswith("| peak device memory MiB |") and lines[-1].endswith("| 100 |")
    assert len([line for line in lines if line.startswith("| eager")]) == 2


def test_a_peak_memory_that_could_not_be_measured_is_a_dash_not_a_number():
    results = attach_speedups([result(BASELINE, 100.0, 125.0), result("cached", 40.0, 50.0)])
    results[1]["peak_memory_mib"] = None
    cpu = report(results)
    cpu["machine"].update(device="cpu", compute_capability=None)
    lines = markdown_table(cpu).splitlines()
    assert lines[2].endswith("| peak process RSS MiB |")
    assert lines[-2].endswith("| 100 |") and lines[-1].endswith("| - |")


def test_model_time_ratios_are_against_onnxruntime_float32_of_the_same_run():
    results = attach_speedups([result(BASELINE, 100.0, 125.0), result("cached", 40.0, 50.0, "onnxruntime"),
                               result("cached", 10.0, 30.0, "openvino")])
    table = markdown_table(report(results))
    assert "model time / onnxruntime float32 |" in table.splitlines()[2]
    assert table.splitlines()[-1].endswith("| 0.25 |") and table.splitlines()[-2].endswith("| 1.00 |")
    assert "model time" not in markdown_table(report(attach_speedups([result(BASELINE, 100.0, 125.0)])))


def test_compare_shows_two_machines_side_by_side(tmp_path):
    first = report(attach_speedups([result(BASELINE, 100.0, 125.0), result("cached", 40.0, 50.0)]), "GPU A")
    second = copy.deepcopy(first)
    second["machine"]["device_name"] = "GPU B"
    second["results"][1]["model_only"]["fps"] = 50.0
    table = compare_table(first, second)
    assert table.startswith("A: GPU A") and "B: GPU B" in table
    assert "| eager float32 | 25.00 | 50.00 | 2.00x |" in table
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="expected a fomm-live-fps/2 or fomm-live-fps/1 report, found schema 'other'"):
        load_report(tmp_path / "bad.json")
    (tmp_path / "v1.json").write_text(json.dumps({**first, "schema": "fomm-live-fps/1"}))
    assert "| eager float32 | 25.00 | 25.00 | 1.00x |" in compare_table(load_report(tmp_path / "v1.json"), first)


@pytest.mark.skipif(not fps.PEAK_RSS_RESET.exists(), reason="the process's peak RSS restarts only on Linux")
def test_each_variants_peak_memory_on_the_cpu_is_its_own(tmp_path, monkeypatch):
    """A variant that holds 400 MiB more than the next one does not hand its peak on to it (the process's lifetime
    peak, ru_maxrss, showed the largest variant's figure on every later row)."""
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    load_model = fps.load_model

    def eager_holds_400_mib_more(*args, **kwargs):
        model = load_model(*args, **kwargs)
        if kwargs.get("backend") == "eager":
            model.ballast = np.ones(400 * 2**20 // 8)  # float64, every page written: resident while eager is timed
        return model

    monkeypatch.setattr(fps, "load_model", eager_holds_400_mib_more)
    assert run_benchmark(["--config", str(SMALL_PARITY_DIR / "config.yaml"), "--random-weights", "--device", "cpu",
                          "--backends", "eager,onnxruntime", "--frames", "2", "--warmup", "1",
                          "--json", str(tmp_path / "cpu.json")]) == 0
    _, eager, onnx = load_report(tmp_path / "cpu.json")["results"]
    assert (eager["backend"], onnx["backend"]) == ("eager", "onnxruntime")
    assert onnx["peak_memory_mib"] > 0
    assert eager["peak_memory_mib"] - onnx["peak_memory_mib"] > 200, (eager["peak_memory_mib"], onnx["peak_memory_mib"])


def test_where_the_peak_cannot_be_restarted_per_variant_no_memory_is_reported(monkeypatch, tmp_path):
    """macOS, Windows: no per-variant peak RSS, so no figure rather than the process's lifetime peak."""
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fps, "PEAK_RSS_RESET", tmp_path / "no-proc" / "clear_refs")
    assert run_benchmark(["--config", str(SMALL_PARITY_DIR / "config.yaml"), "--random-weights", "--device", "cpu",
                          "--backends", "eager", "--frames", "2", "--warmup", "1", "--markdown",
                          str(tmp_path / "cpu.md")]) == 0
    rows = (tmp_path / "cpu.md").read_text().splitlines()[4:]
    assert len(rows) == 2 and all(row.endswith("| - |") for row in rows), rows


def test_tiny_run_on_the_cpu_writes_every_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    paths = {"json": tmp_path / "cpu.json", "markdown": tmp_path / "cpu.md", "chart": tmp_path / "cpu.png"}
    code = run_benchmark(["--config", str(SMALL_PARITY_DIR / "config.yaml"), "--random-weights", "--device", "cpu",
                          "--backends", "eager,onnxruntime,tensorrt", "--frames", "3", "--warmup", "1",
                          *(f"--{k}={v}" for k, v in paths.items())])
    assert code == 0
    data = load_report(paths["json"])
    assert data["machine"]["device"] == "cpu" and data["weights"] == "random" and data["frames"] == 3
    assert len(data["machine"]["load_average"]) == 3
    assert {"python", "torch", "cuda", "tensorrt", "onnxruntime", "openvino", "nncf", "opencv", "mediapipe"} <= set(
        data["software"])
    baseline, ours, onnx = data["results"]  # tensorrt cannot run on the CPU: skipped, said on stderr
    assert baseline["pipeline"] == BASELINE and ours["pipeline"] == onnx["pipeline"] == "cached"
    assert (ours["backend"], onnx["backend"]) == ("eager", "onnxruntime")
    assert "skipping backend tensorrt: runs only on cuda" in capsys.readouterr().err
    # Ours: the live tool's FrameProcessor's own stages (compose = paste-back), between decode and the sink.
    assert set(ours["end_to_end"]["stages"]) == {"decode", "framing", "keypoints", "render", "compose", "sink"}
    assert set(baseline["end_to_end"]["stages"]) == {"decode", "framing", "model", "paste_back", "sink"}
    for part in ("model_only", "end_to_end"):
        assert ours["speedup"][part] == pytest.approx(ours[part]["fps"] / baseline[part]["fps"])
        assert ours[part]["fps"] == pytest.approx(1000 / ours[part]["ms"]["mean"])
    assert ours["peak_memory_mib"] > 0
    assert "| onnxruntime float32 |" in paths["markdown"].read_text()
    chart = cv2.imread(str(paths["chart"]))
    assert chart is not None and chart.shape[1] > 600
    compared = subprocess.run([sys.executable, str(REPO / "run_live.py"), "--benchmark", "--compare", str(paths["json"]),
                               str(paths["json"])], capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0 and "| eager float32 |" in compared.stdout and "1.00x" in compared.stdout


def test_a_variant_that_fails_is_skipped_with_its_reason_and_the_rest_reported(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    import benchmarks.fps as fps

    measure = fps.measure

    def failing_onnxruntime(name, *args):
        if name == "onnxruntime":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return measure(name, *args)

    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fps, "measure", failing_onnxruntime)
    assert run_benchmark(["--config", str(SMALL_PARITY_DIR / "config.yaml"), "--random-weights", "--device", "cpu",
                          "--backends", "onnxruntime,eager", "--frames", "2", "--warmup", "1",
                          "--json", str(tmp_path / "cpu.json")]) == 0
    assert [r["backend"] for r in load_report(tmp_path / "cpu.json")["results"]] == ["eager", "eager"]  # baseline, ours
    assert ("skipping backend onnxruntime float32: RuntimeError: CUDA error: an illegal memory access was encountered"
            in capsys.readouterr().err)


def test_end_to_end_times_the_live_tools_frame_processor(tmp_path, monkeypatch):
    """The end-to-end figure is the code users run: every timed frame goes through FrameProcessor.process."""
    import benchmarks.fps as fps

    calls = []
    process = fps.FrameProcessor.process

    def counted(self, frame, state):
        calls.append(frame.shape)
        return process(self, frame, state)

    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fps.FrameProcessor, "process", counted)
    assert run_benchmark(["--config", str(SMALL_PARITY_DIR / "config.yaml"), "--random-weights", "--device", "cpu",
                          "--backends", "eager", "--frames", "3", "--warmup", "1", "--json", str(tmp_path / "r.json")]) == 0
    assert calls == [(720, 1280, 3)] * (1 + 1 + 3)  # the calibration frame, the warm-up, the timed frames
    ours = load_report(tmp_path / "r.json")["results"][1]
    assert ours["end_to_end"]["stages"]["compose"]["mean"] > 0


def test_alternating_times_every_variant_in_turn(tmp_path, monkeypatch):
    """--alternate: one round of model-only timing runs every variant once, so a changing load hits all alike."""
    import benchmarks.fps as fps

    order = []
    step = fps.model_only_step

    def recorded(pipeline, model, framed):
        run = step(pipeline, model, framed)
        label = f"{model.backend.name} {pipeline}"
        return lambda: (order.append(label), run())[1]

    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fps, "model_only_step", recorded)
    assert run_benchmark(["--config", str(SMALL_PARITY_DIR / "config.yaml"), "--random-weights", "--device", "cpu",
                          "--backends", "eager", "--frames", "2", "--warmup", "1", "--alternate",
                          "--json", str(tmp_path / "r.json")]) == 0
    assert order == ["eager uncached-original", "eager cached"] * 3
    data = load_report(tmp_path / "r.json")
    assert data["alternate"] is True and [r["pipeline"] for r in data["results"]] == [BASELINE, "cached"]
    ours = load_report(tmp_path / "r.json")["results"][1]
    assert ours["end_to_end"]["stages"]["compose"]["mean"] > 0


def test_the_avatar_and_the_first_camera_frame_are_framed_once_per_run(tmp_path, monkeypatch):
    """Framing is setup, not timed: done once and shared by every variant, model-only and end to end."""
    import benchmarks.fps as fps

    framed, avatars = [], []
    frame_inputs, frame_avatar = fps.frame_inputs, fps.frame_avatar
    monkeypatch.setattr(fps, "frame_inputs", lambda *args: framed.append(frame_inputs(*args)) or framed[-1])
    monkeypatch.setattr(fps, "frame_avatar", lambda *args: avatars.append(args[2]) or frame_avatar(*args))
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    assert run_benchmark(["--config", str(SMALL_PARITY_DIR / "config.yaml"), "--random-weights", "--device", "cpu",
                          "--backends", "eager", "--frames", "2", "--warmup", "1", "--json", str(tmp_path / "r.json")]) == 0
    assert len(load_report(tmp_path / "r.json")["results"]) == 2  # the baseline and ours, from the one framing
    (inputs,) = framed
    assert avatars == [inputs.frame_size[0]]
    side = inputs.frame_size[0]
    assert inputs.avatar.crop.shape == inputs.first_crop.shape == (side, side, 3)
    assert inputs.first_frame.shape == (720, 1280, 3)


def test_crops_of_another_frame_size_are_refused():
    import benchmarks.fps as fps
    from live.framing import FramedImage, centre_square

    crop = np.zeros((64, 64, 3), np.uint8)
    inputs = fps.FramedInputs((64, 64), crop, FramedImage(crop, centre_square(64, 64), False), crop, crop)
    with pytest.raises(ValueError, match="crops framed for 64x64, but the model's frame size is 256x256"):
        inputs.check_fits(SimpleNamespace(frame_size=(256, 256)))


def test_openvino_variants_are_listed_beside_the_others(tmp_path, capsys, monkeypatch):
    """Every precision the OpenVINO backend offers here is measured in the same run; the Intel GPU one is skipped
    with its reason where OpenVINO finds no GPU."""
    pytest.importorskip("openvino")
    from engine.backends.openvino import openvino_core

    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    assert run_benchmark(["--config", str(SMALL_PARITY_DIR / "config.yaml"), "--random-weights", "--device", "cpu",
                          "--backends", "onnxruntime,openvino,openvino-gpu", "--frames", "2", "--warmup", "1",
                          "--json", str(tmp_path / "r.json")]) == 0
    variants = [(r["backend"], r["precision"]) for r in load_report(tmp_path / "r.json")["results"][1:]]
    bf16 = "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert variants == [("onnxruntime", "float32"), ("openvino", "float32")] + [("openvino", "bfloat16")] * bf16 + [
        ("openvino", "int8")]
    if not any(name.startswith("GPU") for name in openvino_core().available_devices):
        assert "skipping backend openvino-gpu: OpenVINO finds no Intel GPU here" in capsys.readouterr().err


def test_the_benchmark_command_keeps_native_library_lines_off_the_terminal(tmp_path):
    """mediapipe's LiteRT wrote about 120 lines per run to the terminal ("Sparsity tensors may not yet be fully
    supported" alone 92 times); they go to the tool's log file, as in a live run, and the table to stdout."""
    home = tmp_path / "home"
    run = subprocess.run([sys.executable, str(REPO / "run_live.py"), "--benchmark", "--config",
                          str(SMALL_PARITY_DIR / "config.yaml"), "--random-weights", "--backends", "eager", "--frames", "2",
                          "--warmup", "1"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "FOMM_LIVE_HOME": str(home)})
    assert run.returncode == 0, run.stderr
    assert "| eager float32 |" in run.stdout
    assert "LiteRT" not in run.stderr and "XNNPACK" not in run.stderr and "Sparsity" not in run.stderr
    assert "XNNPACK" in (home / "logs" / "fomm-live.log").read_text()

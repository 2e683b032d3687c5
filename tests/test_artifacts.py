"""The compiled-artifact cache: entries verified against the digest written when they were built, and keyed by
everything they depend on (the keys the backends themselves build)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging

import numpy as np
import pytest
import torch

from engine import load_model
from engine.backends import artifacts, backend_class
from engine.backends.artifacts import build_atomically, cached_artifact, digest_path

from .conftest import SMALL_PARITY_DIR
from .test_backends import frames_of

CONFIG, CHECKPOINT = SMALL_PARITY_DIR / "config.yaml", SMALL_PARITY_DIR / "checkpoint.pth.tar"


@pytest.fixture()
def home(pinned_home):
    return pinned_home


def flip_a_byte_mid_file(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete_the_digest(path):
    digest_path(path).unlink()


CORRUPTIONS = [flip_a_byte_mid_file, truncate, delete_the_digest]


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_an_entry_whose_bytes_changed_is_logged_and_rebuilt(tmp_path, caplog, corrupt):
    path, payload, builds = tmp_path / "compiled" / "kind-abc.pt2", b"compiled artifact " * 1000, []

    def build(temporary):
        builds.append(temporary)
        temporary.write_bytes(payload)

    assert cached_artifact(path, build, "building the thing") == path
    assert digest_path(path).read_text() == hashlib.sha256(payload).hexdigest() + "\n"
    assert cached_artifact(path, build, "building the thing") == path and len(builds) == 1  # verified: reused
    corrupt(path)
    with caplog.at_level(logging.INFO, logger="engine.backends.artifacts"):
        cached_artifact(path, build, "building the thing")
    assert len(builds) == 2 and path.read_bytes() == payload
    assert digest_path(path).read_text() == hashlib.sha256(payload).hexdigest() + "\n"
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert f"cached artifact {path} cannot be trusted" in warning.getMessage()
    assert "rebuilding it" in warning.getMessage()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "building the thing (to replace the cached copy)"]  # not "first start only", as it once said


def test_a_verified_entry_that_will_not_load_is_rebuilt_with_one_line_saying_why(tmp_path, caplog):
    # e.g. a blob written by another OpenVINO build: its digest matches, its loader raises a many-line report.
    path, builds, loads = tmp_path / "compiled" / "kind-abc.blob", [], []

    def build(temporary):
        builds.append(temporary)
        temporary.write_bytes(b"version %d" % len(builds))

    def load(loaded):
        loads.append(loaded.read_bytes())
        if loads[-1] == b"version 1":
            raise RuntimeError("Exception from src/inference/src/dev/core_impl.cpp:1234:\n[ GENERAL_ERROR ]\n"
                               "Check 'false' failed\n    at a\n    at b")
        return loads[-1]

    cached_artifact(path, build, "building the thing")
    with caplog.at_level(logging.WARNING, logger="engine.backends.artifacts"):
        assert artifacts.load_artifact(path, build, "building the thing", load) == b"version 2"
    assert len(builds) == 2 and loads == [b"version 1", b"version 2"]
    (warning,) = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warning == (f"cached artifact {path} is unusable (RuntimeError: Exception from "
                       "src/inference/src/dev/core_impl.cpp:1234: [ GENERAL_ERROR ] Check 'false' failed at a at b); "
                       "rebuilding it")


def test_the_temporary_file_ends_like_the_artifact_and_nothing_stays_after_a_failed_build(tmp_path):
    path = tmp_path / "compiled" / "tensorrt-render-abc.pt2"
    seen = []

    def failing(temporary):
        seen.append(temporary)
        temporary.write_bytes(b"half written")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        cached_artifact(path, failing, "building")
    assert seen[0].name.endswith(".pt2") and seen[0].parent == path.parent
    assert list(path.parent.iterdir()) == []  # no artifact, no digest, no temporary file


def test_the_digest_is_written_after_the_artifact_and_an_old_digest_is_removed_first(tmp_path):
    path = tmp_path / "a.onnx"
    path.write_bytes(b"old")
    digest_path(path).write_text(hashlib.sha256(b"old").hexdigest() + "\n")

    def build(temporary):
        assert digest_path(path).exists()  # the old entry is untouched until the new one is complete
        temporary.write_bytes(b"new")

    build_atomically(path, build)
    assert path.read_bytes() == b"new"
    assert digest_path(path).read_text().strip() == hashlib.sha256(b"new").hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.onnx.sha256"]


# --- the keys the backends build ------------------------------------------------------------------------------------

def vary_weights(model, monkeypatch):
    with torch.no_grad():
        next(model.generator.parameters()).add_(1e-3)


def vary_code(model, monkeypatch):
    monkeypatch.setattr(artifacts, "code_fingerprint", lambda: "0" * 64)


def vary_config(model, monkeypatch):
    detector = dataclasses.replace(model.config.kp_detector, temperature=model.config.kp_detector.temperature * 2)
    model.config = dataclasses.replace(model.config, kp_detector=detector)


def vary_device(model, monkeypatch):
    monkeypatch.setattr(artifacts, "device_description", lambda device: "NVIDIA H200 sm90")


def vary_torch(model, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "9.9.9")


def vary_align_corners(model, monkeypatch):
    model.generator.align_corners = not model.generator.align_corners


def vary_onnxruntime(model, monkeypatch):
    monkeypatch.setattr(pytest.importorskip("onnxruntime"), "__version__", "0.0.1")


def vary_installed(backend: str, distribution: str):
    """Another installed version of ``distribution``, as the backend's module reads it."""
    def vary(model, monkeypatch):
        module = importlib.import_module(f"engine.backends.{backend}")
        real = module.library_version
        monkeypatch.setattr(module, "library_version", lambda name: "0.0.1" if name == distribution else real(name))
    vary.__name__ = f"vary_{distribution}"
    return vary


COMMON = [vary_weights, vary_code, vary_config, vary_device, vary_torch, vary_align_corners]
CASES = ([("onnxruntime", vary) for vary in [*COMMON, vary_onnxruntime, vary_installed("onnxruntime", "onnx")]]
         + [("tensorrt", vary) for vary in [*COMMON, vary_installed("tensorrt", "torch-tensorrt"),
                                           vary_installed("tensorrt", "tensorrt")]])


@pytest.mark.parametrize(("backend", "vary"), CASES, ids=[f"{b}-{v.__name__[5:]}" for b, v in CASES])
def test_the_artifact_path_changes_with_every_dependency(home, monkeypatch, backend, vary):
    """Each backend's own artifact_paths, with one thing it depends on changed: every part lands elsewhere."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    paths_of = backend_class(backend).artifact_paths
    model = load_model(CONFIG, CHECKPOINT, fuse_layers=False)
    before = paths_of(model, "float16")
    assert sorted(before) == ["keypoints", "render"] and before["keypoints"] != before["render"]
    assert all(path.parent == home / "compiled" for path in before.values())
    assert paths_of(model, "float16") == before  # the same inputs: the same entry
    vary(model, monkeypatch)
    after = paths_of(model, "float16")
    assert all(after[part] != before[part] for part in before)


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_the_artifact_path_changes_with_the_precision(home, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    paths_of = backend_class(backend).artifact_paths
    model = load_model(CONFIG, CHECKPOINT)
    assert paths_of(model, "float16")["render"] != paths_of(model, "float32")["render"]


# --- the ONNX files, through the real backend ------------------------------------------------------------------------

@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_a_changed_onnx_file_is_rebuilt_and_never_loaded(home, small_inputs, monkeypatch, caplog, corrupt):
    onnxruntime = pytest.importorskip("onnxruntime")
    first = frames_of(load_model(CONFIG, CHECKPOINT, backend="onnxruntime"), small_inputs)
    files = {path.name.split("-")[1]: path for path in (home / "compiled").glob("onnx-*.onnx")}
    assert sorted(files) == ["keypoints", "render"]
    good = {part: hashlib.sha256(path.read_bytes()).hexdigest() for part, path in files.items()}
    assert all(digest_path(path).read_text().strip() == good[part] for part, path in files.items())

    exports, opened = [], []
    real_export, real_session = torch.onnx.export, onnxruntime.InferenceSession
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: exports.append(a[2]) or real_export(*a, **k))
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda path, *a, **k: opened.append(
        hashlib.sha256(open(path, "rb").read()).hexdigest()) or real_session(path, *a, **k))
    corrupt(files["render"])
    with caplog.at_level(logging.WARNING, logger="engine.backends.artifacts"):
        again = frames_of(load_model(CONFIG, CHECKPOINT, backend="onnxruntime"), small_inputs)
    np.testing.assert_array_equal(again, first)
    assert len(exports) == 1  # the render graph only, exported again
    assert sorted(opened) == sorted(good.values())  # only the files as they were built were ever opened
    assert hashlib.sha256(files["render"].read_bytes()).hexdigest() == good["render"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"cached artifact {files['render']} cannot be trusted")


def test_a_long_library_report_keeps_its_head_and_its_cause_at_the_end():
    from engine.errors import one_line

    report = RuntimeError("Exception from src/core/a.cpp:1:\n" * 40 + "Failed operations: aten.weird_op.default")
    line = one_line(report)
    assert "\n" not in line and len(line) <= 400
    assert line.startswith("RuntimeError: Exception from src/core/a.cpp:1:")
    assert line.endswith("Failed operations: aten.weird_op.default")  # the cause, which OpenVINO puts last

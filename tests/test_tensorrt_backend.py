"""The TensorRT backend's own logic, run here without TensorRT: a stand-in for torch-tensorrt.

The stand-in offers what the backend calls (``dynamo.compile``, ``save``,
``load``): compile hands back the exported program itself and save/load are
``torch.export``'s, so the programs the backend caches really run, in float16
on the CPU.  What TensorRT itself computes is checked on a GPU
(tests/test_backends.py, benchmarks/gpu_check.py).
"""

from __future__ import annotations

import errno
import logging
import sys
import types

import numpy as np
import pytest
import torch

from engine import load_model
from engine.backends import BackendUnavailable, artifacts
from engine.backends import tensorrt as tensorrt_backend
from engine.backends.artifacts import digest_path
from engine.backends.tensorrt import TensorRTBackend, is_resource_error, strong_typing_keywords

from .conftest import SMALL_PARITY_DIR
from .test_backends import frames_of

CONFIG, CHECKPOINT = SMALL_PARITY_DIR / "config.yaml", SMALL_PARITY_DIR / "checkpoint.pth.tar"


class StandInTorchTensorRT:
    """torch-tensorrt as the backend uses it; records every call.  ``compile_error``: what compile raises."""

    def __init__(self, compile_error: BaseException | None = None):
        self.compile_error = compile_error
        self.compiled, self.saved, self.loaded = [], [], []
        self.dynamo = types.SimpleNamespace(compile=self._compile)

    def _compile(self, program, *, arg_inputs, min_block_size, timing_cache_path, use_explicit_typing=False):
        self.compiled.append(dict(min_block_size=min_block_size, timing_cache_path=timing_cache_path,
                                  use_explicit_typing=use_explicit_typing))
        if self.compile_error is not None:
            raise self.compile_error
        return program

    def save(self, program, path, *, output_format, arg_inputs):
        assert output_format == "exported_program"
        self.saved.append(path)
        torch.export.save(program, path)

    def load(self, path):
        self.loaded.append(path)
        return torch.export.load(path)


@pytest.fixture()
def home(pinned_home):
    return pinned_home


def start(monkeypatch, stand_in: StandInTorchTensorRT):
    """A model on the TensorRT backend, built with ``stand_in`` as torch-tensorrt."""
    monkeypatch.setitem(sys.modules, "torch_tensorrt", stand_in)
    model = load_model(CONFIG, CHECKPOINT)
    model.backend = TensorRTBackend(model, "float16")
    return model


def test_programs_are_built_once_as_pt2_and_reused_without_copying_the_networks(home, monkeypatch, small_inputs, caplog):
    reference = frames_of(load_model(CONFIG, CHECKPOINT), small_inputs)
    first = StandInTorchTensorRT()
    with caplog.at_level(logging.INFO, logger="engine.backends.artifacts"):
        model = start(monkeypatch, first)
    assert [options["use_explicit_typing"] for options in first.compiled] == [True, True]
    assert first.compiled[0]["timing_cache_path"] == str(home / "compiled" / "tensorrt-timing-cache.bin")
    programs = sorted((home / "compiled").glob("tensorrt-*"))
    assert [p.name.split("-")[1] for p in programs if p.suffix == ".pt2"] == ["keypoints", "render"]
    assert all(digest_path(p).is_file() for p in programs if p.suffix == ".pt2")
    assert all(path.endswith(".pt2") for path in first.saved + first.loaded)  # the temporary paths too
    assert set(first.loaded) == {str(p) for p in programs if p.suffix == ".pt2"}
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "engine.backends.artifacts"] == [
        "building the TensorRT keypoints engine", "building the TensorRT render engine"]
    frames = frames_of(model, small_inputs)
    # The exported float16 programs run by the CPU's float16 kernels (measured 0.05 from float32 here; TensorRT's
    # bound is checked on a GPU): this shows the plumbing (inputs, their order and dtypes) is right, which a swapped
    # or stale input would break by far more.
    assert 0 < float(np.abs(frames - reference).max()) <= 0.1

    def no_graph(*args):
        raise AssertionError("the networks were copied although both programs are cached")

    monkeypatch.setattr(tensorrt_backend, "graph_to_compile", no_graph)
    second = StandInTorchTensorRT(compile_error=AssertionError("compiled again although the cache holds it"))
    again = start(monkeypatch, second)
    assert second.compiled == [] and len(second.loaded) == 2
    np.testing.assert_array_equal(frames_of(again, small_inputs), frames)


def test_a_changed_program_is_rebuilt_not_loaded(home, monkeypatch, caplog):
    start(monkeypatch, StandInTorchTensorRT())
    (render,) = (home / "compiled").glob("tensorrt-render-*.pt2")
    data = bytearray(render.read_bytes())
    data[len(data) // 2] ^= 0xFF
    render.write_bytes(bytes(data))
    stand_in = StandInTorchTensorRT()
    with caplog.at_level(logging.WARNING, logger="engine.backends.artifacts"):
        start(monkeypatch, stand_in)
    assert len(stand_in.compiled) == 1  # the render program only
    assert render.read_bytes() != bytes(data) and str(render) in stand_in.loaded
    assert f"cached artifact {render} cannot be trusted" in caplog.text


PERMANENT = [
    RuntimeError("Conversion of node aten.bogus failed"),
    NotImplementedError("no converter for aten.bogus.default"),
    ValueError("torch.export: unsupported operator"),
]
RESOURCES = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[TRT] [E] 2: [virtualMemoryBuffer.cpp::resizePhysical] Error Code 2: OutOfMemory (no further info)"),
    MemoryError(),
    OSError(errno.ENOSPC, "No space left on device"),
]


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: type(e).__name__)
def test_a_failure_that_will_repeat_is_remembered_until_its_versions_change(home, error):
    stand_in = StandInTorchTensorRT(compile_error=error)
    backend = object.__new__(TensorRTBackend)  # only _engine is exercised: no model needed
    backend.torch_tensorrt = stand_in
    graph = lambda: (torch.nn.Conv2d(3, 4, 3), (torch.rand(1, 3, 8, 8),))  # noqa: E731
    path = home / "compiled" / "tensorrt-render-a.pt2"
    with pytest.raises(BackendUnavailable, match=f"TensorRT build of the render graph failed: {type(error).__name__}"):
        backend._engine("render", path, graph)
    marker = path.with_suffix(".failed")
    assert marker.read_text() == f"{type(error).__name__}: {error}\n"
    with pytest.raises(BackendUnavailable, match=r"the TensorRT render build failed before with these versions \(.*\); "
                                                  r"delete .*tensorrt-render-a.failed to try again"):
        backend._engine("render", path, graph)
    assert len(stand_in.compiled) == 1
    with pytest.raises(BackendUnavailable, match="TensorRT build of the render graph failed"):
        backend._engine("render", path.with_name("tensorrt-render-b.pt2"), graph)  # another key: tried again
    assert len(stand_in.compiled) == 2


@pytest.mark.parametrize("error", RESOURCES, ids=lambda e: type(e).__name__ + str(RESOURCES.index(e)))
def test_running_out_of_memory_or_disk_falls_back_for_this_run_only(home, error):
    stand_in = StandInTorchTensorRT(compile_error=error)
    backend = object.__new__(TensorRTBackend)
    backend.torch_tensorrt = stand_in
    graph = lambda: (torch.nn.Conv2d(3, 4, 3), (torch.rand(1, 3, 8, 8),))  # noqa: E731
    path = home / "compiled" / "tensorrt-render-a.pt2"
    for attempt in (1, 2):
        with pytest.raises(BackendUnavailable, match=r"TensorRT build of the render graph ran out of resources "
                                                      r"\(.*\); falling back for this run only"):
            backend._engine("render", path, graph)
        assert len(stand_in.compiled) == attempt  # tried again: nothing remembered
        assert list(path.parent.iterdir()) == []  # no marker, no program, no temporary file


def test_a_full_disk_while_saving_is_not_remembered(home):
    stand_in = StandInTorchTensorRT()

    def full_disk(program, path, **options):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    stand_in.save = full_disk
    backend = object.__new__(TensorRTBackend)
    backend.torch_tensorrt = stand_in
    path = home / "compiled" / "tensorrt-keypoints-a.pt2"
    with pytest.raises(BackendUnavailable, match="ran out of resources .*No space left on device"):
        backend._engine("keypoints", path, lambda: (torch.nn.Conv2d(3, 4, 3), (torch.rand(1, 3, 8, 8),)))
    assert list(path.parent.iterdir()) == []


def test_a_resource_error_is_found_among_the_causes():
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except RuntimeError as cause:
            raise RuntimeError("TensorRT engine build failed") from cause
    except RuntimeError as wrapped:
        assert is_resource_error(wrapped)
    assert not is_resource_error(RuntimeError("Conversion of node aten.bogus failed"))


def test_strong_typing_is_asked_for_only_where_compile_takes_the_keyword():
    def compile_2_12(program, *, arg_inputs=None, use_explicit_typing=True, **kwargs): ...
    def compile_2_13(program, *, arg_inputs=None, **kwargs): ...

    assert strong_typing_keywords(compile_2_12) == {"use_explicit_typing": True}
    assert strong_typing_keywords(compile_2_13) == {}  # it would vanish into **kwargs: 2.13 is always strongly typed

"""Inference backends: selection, clear refusals, parity with eager float32, and the compiled-artifact cache.

Backends that need an NVIDIA GPU (tensorrt; float16/bfloat16 precisions) are
refused here with a reason; their parity is measured by benchmarks/gpu_check.py.
"""

from __future__ import annotations

import copy
import functools
import logging
import shutil
import sys

import numpy as np
import pytest
import torch

import engine.backends
from engine.speed import MEASURED_ON, fps_range
from engine import Animator, EngineError, load_model
from engine.backends import BackendUnavailable, backend_class
from engine.backends.artifacts import ENGINE_ROOT, code_fingerprint

from .conftest import SMALL_PARITY_DIR
from .test_parity import as_float

CONFIG, CHECKPOINT = SMALL_PARITY_DIR / "config.yaml", SMALL_PARITY_DIR / "checkpoint.pth.tar"
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
TOLERANCE = 1e-4


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def frames_of(model, inputs) -> np.ndarray:
    animator = Animator(model, as_float(inputs["source"]))
    return np.stack([animator(as_float(frame)) for frame in inputs["driving"]])


@pytest.fixture(scope="module")
def eager_frames(small_inputs):
    return frames_of(load_model(CONFIG, CHECKPOINT), small_inputs)


@pytest.mark.parametrize("name, precision, message", [
    ("warp-drive", None, r"unknown backend 'warp-drive'; expected 'auto' or one of \['compile', 'eager', 'onnxruntime', "
                         r"'openvino', 'openvino-gpu', 'tensorrt'\]"),
    ("eager", "float16", r"backend 'eager' on cpu offers \['float32'\], not 'float16'"),
    ("eager", "float8", r"unknown precision 'float8'"),
    ("tensorrt", None, r"backend 'tensorrt' does not run on cpu"),
    ("onnxruntime", "bfloat16", r"backend 'onnxruntime' on cpu offers \['float32'\], not 'bfloat16'"),
])
def test_impossible_choices_are_clear_errors(name, precision, message):
    with pytest.raises(EngineError, match=message):
        load_model(CONFIG, CHECKPOINT, backend=name, precision=precision)


# What the CUDA half precisions compute, emulated on the CPU on this fixture (2-core AVX-512 EPYC, torch 2.13):
# float16 keypoints 1.8e-3, frames 7.0e-4; bfloat16 keypoints 1.6e-2, frames 5.2e-3.  Bounds: about 3x those.
HALF_PRECISION_BOUNDS = {"float16": (5e-3, 2e-3), "bfloat16": (5e-2, 1.5e-2)}  # max |keypoint error|, max |frame error|


@pytest.mark.parametrize("name, precision", [("eager", "float16"), ("eager", "bfloat16"), ("compile", "float16")])
def test_half_precision_stays_close_to_float32(home, small_inputs, eager_frames, name, precision, monkeypatch):
    """A backend's float16/bfloat16 (offered on CUDA only) built directly on the CPU: 16-bit convolutions, float32
    coordinates and sampling.  With 16-bit sampling, a PyTorch CPU kernel even returned NaN frames.

    For compile, this shows the mixed-precision graphs trace whole (fullgraph), as they must on CUDA.  They run
    through AOT autograd's eager backend here, not Inductor: Inductor's CPU code generator (torch 2.13) miscompiles
    a convolution, a slice-and-stack and a pixel shuffle followed by any pointwise op in float16 and bfloat16 on
    CPUs with AVX-512 FP16 (NaN or huge values; the up blocks' merged upsampling is that pattern), and CUDA runs
    Triton code instead, which that bug does not touch."""
    if name == "compile":
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    model = load_model(CONFIG, CHECKPOINT)
    driving = torch.from_numpy(small_inputs["driving"]).permute(0, 3, 1, 2).float() / 255
    expected = model.detect_keypoints(driving)
    model.backend = backend_class(name)(model, precision)
    keypoints = model.detect_keypoints(driving)
    assert keypoints.value.dtype == keypoints.jacobian.dtype == torch.float32
    keypoint_bound, frame_bound = HALF_PRECISION_BOUNDS[precision]
    assert 0 < float((keypoints.value - expected.value).abs().max()) <= keypoint_bound
    frames = frames_of(model, small_inputs)
    assert np.isfinite(frames).all()
    assert 0 < float(np.abs(frames - eager_frames).max()) <= frame_bound


def test_a_float16_generator_encodes_and_renders_its_own_source(small_inputs):
    """Generator.render(encode_source(...)) holds for a half copy too: the cached source comes out in the dtypes
    MotionSource documents (maps the convolutions read in float16, image and keypoints float32)."""
    model = load_model(CONFIG, CHECKPOINT)
    source = torch.from_numpy(small_inputs["source"]).permute(2, 0, 1)[None].float() / 255
    generator, detector = copy.deepcopy(model.generator).half(), copy.deepcopy(model.kp_detector).half()
    with torch.no_grad():
        keypoints = detector(source.half())
        state = generator.encode_source(source.half(), keypoints)
        frame = generator.render(state, keypoints)
        expected = model.generator.render(model.generator.encode_source(source, model.kp_detector(source)),
                                          model.kp_detector(source))
    assert [t.dtype for t in (state.features, state.motion.heatmaps)] == [torch.float16] * 2
    assert [t.dtype for t in (state.motion.image, *state.motion.keypoints)] == [torch.float32] * 3
    assert frame.dtype == torch.float16
    assert float((frame.float() - expected).abs().max()) <= HALF_PRECISION_BOUNDS["float16"][1]


def test_compile_on_the_cpu_looks_for_the_compiler_inductor_runs(monkeypatch):
    compile_backend = backend_class("compile")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert compile_backend.unavailable_reason(torch.device("cpu")) == (
        "no C++ compiler: Inductor compiles with '/nonexistent/c++' on the CPU (set CXX to name another)")
    monkeypatch.setenv("CXX", sys.executable)  # any program that exists: only the lookup is checked
    assert compile_backend.unavailable_reason(torch.device("cpu")) is None


def test_onnxruntime_matches_eager(home, small_inputs, eager_frames):
    model = load_model(CONFIG, CHECKPOINT, backend="onnxruntime")
    assert model.backend.name == "onnxruntime" and model.backend.providers == ["CPUExecutionProvider"]
    assert float(np.abs(frames_of(model, small_inputs) - eager_frames).max()) <= TOLERANCE


def test_compile_matches_eager(home, small_inputs, eager_frames):
    model = load_model(CONFIG, CHECKPOINT, backend="compile")
    assert float(np.abs(frames_of(model, small_inputs) - eager_frames).max()) <= TOLERANCE


def test_auto_falls_back_and_says_why(home, monkeypatch, caplog):
    monkeypatch.setitem(engine.backends.AUTO_ORDER, "cpu", ("tensorrt", "onnxruntime", "eager"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with caplog.at_level(logging.WARNING, logger="engine.backends"):
        model = load_model(CONFIG, CHECKPOINT, backend="auto")
    assert model.backend.name == "eager"
    log = caplog.text
    assert "backend tensorrt cannot run here (backend 'tensorrt' does not run on cpu); trying the next" in log
    assert "backend onnxruntime cannot run here (onnxruntime is not installed" in log


def test_onnx_files_are_cached_rebuilt_when_corrupt_and_keyed_by_the_weights(home, small_inputs, monkeypatch):
    first = frames_of(load_model(CONFIG, CHECKPOINT, backend="onnxruntime"), small_inputs)
    files = sorted((home / "compiled").glob("onnx-*.onnx"))
    assert [f.name.split("-")[1] for f in files] == ["keypoints", "render"]

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds the files")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    np.testing.assert_array_equal(frames_of(load_model(CONFIG, CHECKPOINT, backend="onnxruntime"), small_inputs), first)
    monkeypatch.undo()
    monkeypatch.setenv("FOMM_LIVE_HOME", str(home))
    files[1].write_bytes(b"corrupt")
    np.testing.assert_array_equal(frames_of(load_model(CONFIG, CHECKPOINT, backend="onnxruntime"), small_inputs), first)
    assert files[1].stat().st_size > 1000  # rebuilt in place
    load_model(CONFIG, CHECKPOINT, backend="onnxruntime", align_corners=False)
    assert len(list((home / "compiled").glob("onnx-*.onnx"))) == 4  # another function: other files


def test_gpu_providers_get_their_device_and_tensorrt_an_engine_cache(tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from engine.backends.onnxruntime import PROVIDERS, provider_settings

    providers = provider_settings(list(PROVIDERS), 1, tmp_path / "engines")
    assert providers[0] == ("TensorrtExecutionProvider", {"device_id": 1, "trt_engine_cache_enable": True,
                                                          "trt_engine_cache_path": str(tmp_path / "engines")})
    assert providers[1] == ("CUDAExecutionProvider", {"device_id": 1}) and providers[2] == "CPUExecutionProvider"
    # ONNX Runtime takes the list as written (absent GPU providers are skipped with a warning).
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "relu", [value],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=providers)
    (out,) = session.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})
    np.testing.assert_array_equal(out, [0.0, 2.0])
    if GPU_PROVIDERS & set(onnxruntime.get_available_providers()):
        pytest.skip("this onnxruntime has GPU providers: the silent fallback to the CPU cannot be staged here")
    # That session fell back to the CPU without an error: on a CUDA device the backend must refuse it.
    from engine.backends.onnxruntime import check_providers_in_use

    assert session.get_providers() == ["CPUExecutionProvider"]
    check_providers_in_use(session.get_providers(), torch.device("cpu"))
    with pytest.raises(BackendUnavailable, match=r"could not start its CUDA or TensorRT provider \(the session has only "
                                                  r"\['CPUExecutionProvider'\]"):
        check_providers_in_use(session.get_providers(), torch.device("cuda"))
    check_providers_in_use(["CUDAExecutionProvider", "CPUExecutionProvider"], torch.device("cuda"))


@pytest.mark.parametrize(("installed", "expected"), [
    ({"onnxruntime"}, "the CPU build of onnxruntime is installed, which has no GPU provider: pip uninstall -y onnxruntime "
                      "onnxruntime-gpu && pip install onnxruntime-gpu"),
    ({"onnxruntime", "onnxruntime-gpu"}, "both onnxruntime (CPU) and onnxruntime-gpu are installed and the CPU one hides "
                                         "the GPU providers: pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
                                         "onnxruntime-gpu"),
    ({"onnxruntime-gpu"}, "onnxruntime-gpu is installed but the onnxruntime module found offers no GPU provider: "
                          "pip install --force-reinstall onnxruntime-gpu"),
])
def test_no_gpu_provider_names_the_package_mix_up_and_its_fix(monkeypatch, installed, expected):
    onnxruntime = pytest.importorskip("onnxruntime")
    from engine.backends import onnxruntime as backend

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(backend, "installed_distributions", lambda: installed | {"torch", "numpy"})
    assert backend.OnnxRuntimeBackend.unavailable_reason(torch.device("cuda")) == expected


def test_the_reason_comes_before_any_export(home, monkeypatch):
    """On CUDA with the CPU build of onnxruntime, selecting the backend names the fix and builds nothing."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from engine.backends import onnxruntime as backend

    model = load_model(CONFIG, CHECKPOINT)
    # Seen as on CUDA: nothing touches the GPU before the backend's checks refuse.
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(backend, "installed_distributions", lambda: {"onnxruntime"})
    with pytest.raises(BackendUnavailable, match=r"the CPU build of onnxruntime is installed, which has no GPU provider"):
        model.use_backend("onnxruntime")
    assert not (home / "compiled").exists()


def test_code_fingerprint_changes_with_any_engine_source(tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(ENGINE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_fingerprint(copy) == code_fingerprint()
    layers = copy / "layers.py"
    layers.write_text(layers.read_text() + "\n# changed\n")
    assert code_fingerprint(copy) != code_fingerprint()


def test_start_up_line_names_device_backend_and_precision_and_warns_on_cpu(home):
    line = load_model(CONFIG, CHECKPOINT, backend="onnxruntime").describe()
    assert line.startswith("config on the CPU: backend onnxruntime, float32")
    # The figures measured for this backend and precision, with their machine: not a guessed range.
    assert f"no GPU in use: measured {fps_range('onnxruntime', 'float32')} frames per second end to end with " \
           f"onnxruntime float32 on {MEASURED_ON}" in line
    eager = load_model(CONFIG, CHECKPOINT, backend="eager").describe()
    assert "eager float32 has not been measured on a CPU" in eager and "--benchmark" in eager


def test_onnx_graphs_use_opset_17(home):
    onnx = pytest.importorskip("onnx")
    load_model(CONFIG, CHECKPOINT, backend="onnxruntime")
    for path in (home / "compiled").glob("onnx-*.onnx"):
        graph = onnx.load(str(path))
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
        ops = {node.op_type for node in graph.graph.node}
        assert "Conv" in ops and "Inverse" not in ops
        if "render" in path.name:
            assert "GridSample" in ops


def tensorrt_missing_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    return backend_class("tensorrt").unavailable_reason(torch.device("cuda"))


@pytest.mark.skipif(tensorrt_missing_reason() is not None, reason=f"TensorRT cannot run here: {tensorrt_missing_reason()}")
def test_tensorrt_matches_eager_in_float16_and_reuses_its_engines(home, small_inputs, monkeypatch):
    from benchmarks.gpu_check import exact_float32

    with exact_float32():  # the reference without TF32, whose 10-bit mantissa would blur the float16 error
        reference = frames_of(load_model(CONFIG, CHECKPOINT, device="cuda"), small_inputs)
    model = load_model(CONFIG, CHECKPOINT, device="cuda", backend="tensorrt")
    assert model.backend.precision == "float16"
    # The float16 bound measured for eager float16 (above); TensorRT picks its own kernels, so it may need its own.
    assert float(np.abs(frames_of(model, small_inputs) - reference).max()) <= HALF_PRECISION_BOUNDS["float16"][1]
    assert len(list((home / "compiled").glob("tensorrt-*.pt2"))) == 2

    def no_build(*args, **kwargs):
        raise AssertionError("compiled again although the cache holds both programs")

    import torch_tensorrt

    monkeypatch.setattr(torch_tensorrt.dynamo, "compile", no_build)
    again = load_model(CONFIG, CHECKPOINT, device="cuda", backend="tensorrt")
    assert float(np.abs(frames_of(again, small_inputs) - reference).max()) <= HALF_PRECISION_BOUNDS["float16"][1]

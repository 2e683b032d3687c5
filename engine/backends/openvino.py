"""OpenVINO: the per-frame graphs compiled for the CPU (or an Intel GPU) in float32, bfloat16 or int8.

The graphs are the ones the other backends run: the keypoint detector and the
render step (:class:`engine.export.FlatRender`), taken through
``torch.export`` and OpenVINO's converter (measured faster to run than the
same graphs read from our ONNX files, see benchmarks/RESULTS.md).  Compiled
models are exported to the artifact cache (see :mod:`engine.backends.artifacts`)
under a key of the weights, the engine's code, the config, the precision, the
device and the OpenVINO version; a cached model that fails to load is rebuilt.

Precisions on the CPU:

- ``float32``: OpenVINO's own default on a CPU with bfloat16 hardware is
  bfloat16, so the f32 inference precision is set explicitly (and read back).
- ``bfloat16``: only where OpenVINO reports the CPU runs it natively (its
  ``OPTIMIZATION_CAPABILITIES`` list "BF16": avx512_bf16 or AMX); emulated it
  would be slower than float32, so it is refused elsewhere.
- ``int8``: the render graph quantized by NNCF post-training quantization,
  calibrated on real faces, with a quality gate (:mod:`.openvino_int8`); its
  operations left unquantized run in bfloat16 where native, else float32.
  The keypoint detector stays float32 (quantized, it moved keypoints by 0.42
  on the test fixture).

``openvino-gpu`` runs the same graphs on an Intel GPU that OpenVINO lists
(``GPU`` in its available devices); tensors stay on the host (``--device cpu``).
"""

from __future__ import annotations

import copy
import functools
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import one_line
from ..export import FlatKeypoints, FlatRender, example_inputs, flatten_source
from ..generator import SourceState
from ..held_signals import held_stop_signals
from ..model import RenderStep
from ..motion import Keypoints
from ..speed import cpu_speed, fps_range
from .artifacts import artifact_key, artifact_path, library_version, load_artifact
from .base import Backend, BackendUnavailable

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[openvino]"'
INFERENCE_PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
NATIVE_CAPABILITY = {"bfloat16": "BF16", "float16": "FP16"}  # precision -> OPTIMIZATION_CAPABILITIES entry


@functools.lru_cache(maxsize=1)
def openvino_core():
    """The process's OpenVINO Core (creating one scans the devices: done once)."""
    import openvino

    return openvino.Core()


def native_precision_reason(capabilities: list[str], device: str, precision: str) -> str | None:
    """Why ``precision`` cannot run natively on an OpenVINO ``device`` with ``capabilities``, or None if it can."""
    wanted = NATIVE_CAPABILITY.get(precision)
    if wanted is None or wanted in capabilities:
        return None
    return (f"{precision} is not native on this {device} (OpenVINO lists {capabilities}, no {wanted}; on a CPU it "
            "needs avx512_bf16 or AMX): emulated it runs slower than float32, use --precision float32")


def runtime_precisions(compiled) -> set[str]:
    """The element types the compiled model's operations really execute in, e.g. {"f32", "i32"} (OpenVINO's
    runtime model records each operation's ``runtimePrecision``)."""
    return {str(op.get_rt_info()["runtimePrecision"].astype(str)) for op in compiled.get_runtime_model().get_ops()
            if "runtimePrecision" in op.get_rt_info()}


def intel_gpu_name() -> str | None:
    """The full name of the first Intel GPU OpenVINO lists, or None when it lists none."""
    core = openvino_core()
    for device in core.available_devices:
        if device.split(".")[0] == "GPU":
            try:
                return str(core.get_property(device, "FULL_DEVICE_NAME"))
            except Exception:  # a GPU listed but unwell (its driver): it is still there; compiling will say why
                return device
    return None


class OpenVinoBackend(Backend):
    name = "openvino"
    precisions = {"cpu": ("float32", "bfloat16", "int8")}
    openvino_device = "CPU"

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return f"openvino is not installed: {INSTALL_HINT}"
        return super().unavailable_reason(device)

    @classmethod
    def precision_reason(cls, precision: str) -> str | None:
        """Why ``precision`` cannot run natively here (quick: reads OpenVINO's device properties), or None."""
        capabilities = list(openvino_core().get_property(cls.openvino_device, "OPTIMIZATION_CAPABILITIES"))
        return native_precision_reason(capabilities, cls.openvino_device, precision)

    @classmethod
    def auto_precisions(cls, device: torch.device) -> tuple[str, ...]:
        """bfloat16 (where native), then float32.  Not int8: its frames were 5.1e-2 off float32 on the test fixture,
        beyond the bfloat16 bound the project sets (1.5e-2, tests/test_backends.py); OpenVINO's bfloat16 was 5.7e-3."""
        return ("bfloat16", "float32")

    def auto_choice_reason(self) -> str:
        if not self.model.renders:
            return "the fastest float32 keypoint detector here (a remote client's keypoints stay float32)"
        if self.precision == "bfloat16":
            why = ("the fastest variant here whose frames stay within the project's bfloat16 tolerance (1.5e-2 of "
                   "float32; OpenVINO bfloat16 measured 5.7e-3 on the test fixture)")
        else:
            why = "the fastest float32 here"
        return f"{why}; {self.int8_offer()}{self.intel_gpu_offer()}"

    def faster_precision_hint(self) -> str:
        """Where float32 was asked for or defaulted to (not chosen by auto, which says why, e.g. after a failed bfloat16
        build) and the CPU runs bfloat16 natively: the faster precisions."""
        if (self.chosen_by_auto or self.precision != "float32" or not self.model.renders
                or self.precision_reason("bfloat16") is not None):
            return ""
        return (f"; faster on this CPU: --precision bfloat16 ({fps_range('openvino', 'bfloat16')} frames per second "
                f"there) or --precision int8 ({fps_range('openvino', 'int8')}; quantized, quality-gated on faces)")

    def intel_gpu_offer(self) -> str:
        """Where OpenVINO also finds an Intel GPU, the option that renders there ("" where it finds none).  auto does
        not choose it: no Intel GPU has been measured against the CPU for this model."""
        name = intel_gpu_name() if self.openvino_device == "CPU" else None
        if name is None:
            return ""
        return (f"; OpenVINO also finds an Intel GPU, {name}: --backend openvino-gpu renders there (auto does not "
                "choose it unmeasured; python run_live.py --benchmark --backends openvino,openvino-gpu compares both)")

    def int8_offer(self) -> str:
        """The faster opt-in, int8, with its speed here when it was built on this machine (its quality report)."""
        from .openvino_int8 import quality_report_path, read_report

        try:
            path = self.artifact("render", "int8")
        except BackendUnavailable as error:  # the shipped calibration faces are missing or unreadable
            return f"--precision int8 cannot be built here: {error}"
        report = read_report(quality_report_path(path))
        if report is None:
            return ("faster opt-in: --precision int8 (quantized, quality-gated on faces), not built here yet: its first "
                    f"start calibrates it and measures its speed here ({cpu_speed('openvino', 'int8')})")
        int8_ms, own_ms = report["ms_per_frame"], self.measure_ms()
        figures = (f"{int8_ms:.0f} ms per frame measured here against {own_ms:.0f} ms for {self.precision}, worst "
                   f"held-out PSNR {report['worst_psnr_db']:.1f} dB")
        if int8_ms < own_ms:
            return f"faster opt-in: --precision int8 (quantized, quality-gated on faces): {figures}"
        return f"--precision int8 is no faster here ({figures})"

    def __init__(self, model, precision: str, quality_gate=None):
        """quality_gate: the :class:`.openvino_int8.QualityGate` an int8 model must pass (default: DEFAULT_GATE)."""
        super().__init__(model, precision)
        reason = self.unavailable_reason(model.device) or self.precision_reason(precision)
        if reason:
            raise BackendUnavailable(reason)
        import openvino

        self.openvino = openvino
        self.core = openvino_core()
        self.versions = dict(openvino=openvino.__version__, openvino_device=self.device_description())
        self._key = artifact_key(model, "", **self.versions)  # hashing the weights once, not per artifact looked up
        self._example = None
        # int8 quantizes the render graph only: the keypoint detector runs in float32.
        detector_precision = "float32" if precision == "int8" else precision
        self.keypoints_model = self.compiled("keypoints", detector_precision, self.convert_keypoints)
        self.keypoints_request = self.keypoints_model.create_infer_request()
        self.description = f"OpenVINO {openvino.__version__} on {self.versions['openvino_device']}"
        self.render_model = self.render_request = self.quality = None
        if not model.renders:
            self.precision = detector_precision  # all it runs (int8 would name a render graph it does not have)
            return
        if precision == "int8":
            from .openvino_int8 import DEFAULT_GATE, build_int8_render

            self.render_model, self.quality = build_int8_render(self, quality_gate or DEFAULT_GATE)
        else:
            self.render_model = self.compiled("render", precision, self.convert_render)
        self.render_request = self.render_model.create_infer_request()

    def device_description(self) -> str:
        """The OpenVINO device's full name and capabilities (a compiled model is only reused on the same kind)."""
        name = self.core.get_property(self.openvino_device, "FULL_DEVICE_NAME")
        capabilities = self.core.get_property(self.openvino_device, "OPTIMIZATION_CAPABILITIES")
        return f"{self.openvino_device}: {name} [{' '.join(capabilities)}]"

    def compile_config(self, precision: str) -> dict[str, object]:
        """OpenVINO's settings for ``precision``: the inference precision always explicit, latency over
        throughput (one frame at a time), as many threads as PyTorch uses."""
        config = {"INFERENCE_PRECISION_HINT": self.inference_precision(precision), "PERFORMANCE_HINT": "LATENCY"}
        if self.openvino_device == "CPU":
            config["INFERENCE_NUM_THREADS"] = torch.get_num_threads()
        return config

    def artifact(self, part: str, precision: str) -> Path:
        """Where the compiled ``part`` graph in ``precision`` is cached."""
        if precision == "int8":  # the calibration faces are package data, outside the code fingerprint
            from .openvino_int8 import calibration_digest

            extra = {"nncf": library_version("nncf"), "calibration": calibration_digest()}
        else:
            extra = {}
        return artifact_path(f"openvino-{part}", ".blob", {**self._key, "precision": precision, **extra}, part=part)

    def compiled(self, part: str, precision: str, convert: Callable[[], object]):
        """The compiled ``part`` graph in ``precision``: imported from the cache when it holds a trusted copy,
        else converted (``convert()`` -> an OpenVINO model), compiled and exported there first."""
        return load_artifact(self.artifact(part, precision), lambda path: self.compile_to(convert(), path, precision, part),
                             f"OpenVINO: building the {part} graph in {precision}",
                             lambda path: self.import_compiled(path, precision))

    def compile_to(self, graph, path: Path, precision: str, part: str) -> None:
        """Compile an OpenVINO model in ``precision``, check it runs in it, and export it to ``path``."""
        try:
            compiled = self.core.compile_model(graph, self.openvino_device, self.compile_config(precision))
        except Exception as error:
            raise BackendUnavailable(f"OpenVINO could not compile the {part} graph: {one_line(error)}") from error
        self.check_precision(compiled, precision)
        buffer = io.BytesIO()
        compiled.export_model(buffer)
        path.write_bytes(buffer.getbuffer())

    def import_compiled(self, path: Path, precision: str):
        compiled = self.core.import_model(path.read_bytes(), self.openvino_device, self.compile_config(precision))
        self.check_precision(compiled, precision)
        return compiled

    def inference_precision(self, precision: str) -> str:
        """OpenVINO's element type for ``precision``'s floating-point work; int8 graphs run what is left unquantized
        in bf16 where native (measured 268 against 400 ms per render with f32, 2e-4 apart), else f32."""
        if precision == "int8":
            return "f32" if self.precision_reason("bfloat16") else "bf16"
        return INFERENCE_PRECISIONS[precision]

    def check_precision(self, compiled, precision: str) -> None:
        """Raise when the compiled model does not run in ``precision`` (e.g. a float32 model silently in bf16)."""
        wanted = self.inference_precision(precision)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        used = runtime_precisions(compiled) if self.openvino_device == "CPU" else set()
        lower = {"f32": {"bf16", "f16"}, "bf16": {"f16"}, "f16": set()}[wanted]
        if hint != wanted or used & lower:
            raise BackendUnavailable(f"OpenVINO compiled a {precision} model that runs in {hint} "
                                     f"(operations in {sorted(used)})")

    def example_inputs(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The example frame and the render inputs made from it (:func:`engine.export.example_inputs`; float32,
        contiguous, eager; no render inputs for a keypoints-only model): what the graphs are traced with and
        :meth:`measure_ms` times.  Made once per backend."""
        if self._example is None:
            frame, source, driving = example_inputs(self.model)
            render_inputs = () if source is None else (*flatten_source(source), *driving)
            self._example = frame, tuple(tensor.contiguous() for tensor in render_inputs)
        return self._example

    def convert_keypoints(self):
        frame, _ = self.example_inputs()
        return self._convert(FlatKeypoints(self.model.kp_detector), (frame,), "keypoints")

    def convert_render(self):
        _, inputs = self.example_inputs()
        return self._convert(FlatRender(self.render_module()), inputs, "render")

    def render_module(self) -> torch.nn.Module:
        """The render step to convert.  int8 takes a copy whose decoder upsamples and convolves plainly: quantized,
        the phase-grid convolutions (:meth:`engine.generator.Generator.fuse_upsampling`) are no faster than the plain
        ones, and slower when other programs share the CPU, as a video call does (vox-adv-256 on a 2-core AMX Xeon,
        medians of 18 renders alternating: 73.7 against 72.2 ms on an idle machine, 148 against 123 ms beside a
        load of 5-10); in bf16 and f32 the phase grids are as fast or faster (127.6 against 131.5 ms in bf16)."""
        if self.precision != "int8":
            return self.model.render_step
        generator = copy.deepcopy(self.model.generator)
        generator.unfuse_upsampling()
        return RenderStep(generator).eval()

    def _convert(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], part: str):
        """torch.export of ``module`` (static shapes) -> an OpenVINO model."""
        try:
            # Signals held (see engine.held_signals): torch.export swallowed a SIGINT in 2 of 12 tries, and the
            # conversion's callbacks into Python turned one into a conversion failure or an abort.
            with held_stop_signals(), warnings.catch_warnings():
                with torch.no_grad():
                    program = torch.export.export(module.eval(), inputs)
                # OpenVINO 2026.4 copies the program's tree specs, which torch 2.13 answers with a deprecation
                # warning on every build: two lines the user can do nothing about.
                warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
                return self.openvino.convert_model(program)
        except Exception as error:
            raise BackendUnavailable(f"OpenVINO conversion of the {part} graph failed: {one_line(error)}") from error

    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        value, jacobian = self.infer(self.keypoints_request, [frames])
        return Keypoints(value, jacobian)

    def render_prepared(self, source: list[np.ndarray], driving: Keypoints) -> torch.Tensor:
        (frame,) = self.infer(self.render_request, [*source, driving.value, driving.jacobian])
        return frame

    def prepare_source(self, source: SourceState) -> list[np.ndarray]:
        """The source as the render graph's first inputs (float32, contiguous, host), made once per avatar."""
        return [as_input(tensor) for tensor in flatten_source(source)]

    def infer(self, request, inputs: list) -> list[torch.Tensor]:
        """Run a request on host arrays (tensors are viewed, not copied); float32 torch tensors out, on the
        model's device."""
        request.infer([as_input(value) for value in inputs], share_inputs=True)
        return [torch.from_numpy(np.array(output.data, dtype=np.float32, copy=True)).to(self.model.device)
                for output in request.output_tensors]

    def measure_ms(self, frames: int = 3) -> float:
        """Median milliseconds of keypoints + render per frame here, on the example inputs, after one warm-up."""
        frame, inputs = self.example_inputs()
        times = []
        for _ in range(frames + 1):
            begin = time.perf_counter()
            self.infer(self.keypoints_request, [frame])
            self.infer(self.render_request, list(inputs))
            times.append((time.perf_counter() - begin) * 1e3)
        return float(np.median(times[1:]))


def as_input(value) -> np.ndarray:
    """A float32 C-contiguous host array (a view of a CPU torch tensor where possible)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


class OpenVinoGpuBackend(OpenVinoBackend):
    """The same graphs on an Intel GPU (``--backend openvino-gpu``; the model's tensors stay on the host)."""

    name = "openvino-gpu"
    precisions = {"cpu": ("float16", "float32")}
    openvino_device = "GPU"

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        if intel_gpu_name() is None:
            return (f"OpenVINO finds no Intel GPU here (its devices: {list(openvino_core().available_devices)}); on "
                    "Linux the GPU needs Intel's compute runtime (intel-opencl-icd) and the user in the 'render' group")
        return None

    def __init__(self, model, precision: str):
        super().__init__(model, precision)
        self.accelerator = self.core.get_property(self.openvino_device, "FULL_DEVICE_NAME")


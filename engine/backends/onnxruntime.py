"""ONNX Runtime: the per-frame modules exported to ONNX (opset 17), run by the best provider present.

Providers are tried in the order TensorRT, CUDA, CPU.  The graphs are
exported by :mod:`engine.export` and cached (see
:mod:`engine.backends.artifacts`): a file whose bytes changed since it was
exported, or that fails to load, is rebuilt.  The
TensorRT provider keeps the engines it builds in the same cache
(``<cache>/compiled/onnxruntime-tensorrt``), so only the first start builds them.
``python -m engine.tensorrt_onnx_ops`` checks that TensorRT's ONNX parser
takes them.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import torch

from ..errors import one_line
from ..export import ONNX_OPSET, SOURCE_INPUTS, export_keypoints_onnx, export_render_onnx, flatten_source
from ..generator import SourceState
from ..motion import Keypoints
from ..weights import cache_root
from .artifacts import artifact_key, artifact_path, library_version, load_artifact
from .base import Backend, BackendUnavailable

PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset(PROVIDERS[:2])


def provider_settings(providers: list[str], device_index: int, engine_cache: Path) -> list:
    """``providers`` as InferenceSession takes them, GPU ones with their device and, for TensorRT, its engine cache."""
    options = {
        "TensorrtExecutionProvider": {"device_id": device_index, "trt_engine_cache_enable": True,
                                      "trt_engine_cache_path": str(engine_cache)},
        "CUDAExecutionProvider": {"device_id": device_index},
    }
    return [(provider, options[provider]) if provider in options else provider for provider in providers]


def installed_distributions() -> set[str]:
    """Names (lower case) of the installed Python distributions."""
    return {(distribution.metadata["Name"] or "").lower() for distribution in importlib.metadata.distributions()}


def missing_gpu_providers_reason(onnxruntime_packages: set[str]) -> str:
    """Why ONNX Runtime offers no GPU provider, and the fix, given which of its packages are installed.

    ``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the same ``onnxruntime`` module: with both present
    whichever was installed last wins, often the CPU one, and the GPU providers vanish.
    """
    fix = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    if onnxruntime_packages == {"onnxruntime", "onnxruntime-gpu"}:
        return f"both onnxruntime (CPU) and onnxruntime-gpu are installed and the CPU one hides the GPU providers: {fix}"
    if "onnxruntime-gpu" in onnxruntime_packages:
        return ("onnxruntime-gpu is installed but the onnxruntime module found offers no GPU provider: "
                "pip install --force-reinstall onnxruntime-gpu")
    return f"the CPU build of onnxruntime is installed, which has no GPU provider: {fix}"


def check_providers_in_use(in_use: list[str], device: torch.device) -> None:
    """Raise BackendUnavailable when a session on a CUDA device came up with no GPU provider.

    ONNX Runtime lists the providers its build contains; one whose libraries
    (CUDA, cuDNN, TensorRT) fail to load is dropped when the session is made,
    with a logged error only, and the session silently runs on the CPU.
    """
    if device.type == "cuda" and not GPU_PROVIDERS & set(in_use):
        raise BackendUnavailable(f"ONNX Runtime could not start its CUDA or TensorRT provider (the session has only {in_use}; "
                                 "its log above names the library that failed to load)")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = {"cpu": ("float32",), "cuda": ("float32",)}

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        try:
            import onnxruntime
        except ImportError:
            return 'onnxruntime is not installed: pip install -e ".[onnx]"'
        if device.type == "cuda" and not GPU_PROVIDERS & set(onnxruntime.get_available_providers()):
            return missing_gpu_providers_reason({"onnxruntime", "onnxruntime-gpu"} & installed_distributions())
        return super().unavailable_reason(device)

    def __init__(self, model, precision: str):
        super().__init__(model, precision)
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendUnavailable(f"onnxruntime is not installed ({error}); pip install -e \".[onnx]\"") from None
        self.ort = onnxruntime
        self.device = model.device
        # Where IOBinding finds the tensors: ONNX Runtime's name for the device, and its index.
        self.binding_device = ("cuda", self.device.index or 0) if self.device.type == "cuda" else ("cpu", 0)
        wanted = PROVIDERS if self.device.type == "cuda" else ("CPUExecutionProvider",)
        self.providers = [p for p in wanted if p in onnxruntime.get_available_providers()]
        paths = self.artifact_paths(model, precision)
        self.keypoints_session = self._session("keypoints", paths["keypoints"], lambda path: export_keypoints_onnx(model, path))
        self.render_session = (self._session("render", paths["render"], lambda path: export_render_onnx(model, path))
                               if model.renders else None)
        self.description = f"providers {self.keypoints_session.get_providers()}"

    @classmethod
    def artifact_paths(cls, model, precision: str) -> dict[str, Path]:
        """Where each part's ONNX file is cached, under a key of all it depends on (see
        :func:`engine.backends.artifacts.artifact_key`)."""
        import onnxruntime

        key = artifact_key(model, precision, opset=str(ONNX_OPSET), onnxruntime=onnxruntime.__version__,
                           onnx=library_version("onnx"))
        return {part: artifact_path(f"onnx-{part}", ".onnx", key, part=part) for part in ("keypoints", "render")}

    def _session(self, part: str, path: Path, export):
        """A session on the cached ONNX file of ``part``, exported first when the cache has no trusted copy."""
        try:
            return load_artifact(path, export, f"exporting the {part} graph to ONNX", self._open)
        except BackendUnavailable:  # the providers, not the file
            raise
        except Exception as error:
            raise BackendUnavailable(f"the {part} graph could not be exported to ONNX and loaded: "
                                     f"{one_line(error)}") from error

    def _open(self, path: Path):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads would spin and steal the cores that framing and PyTorch need between frames.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = provider_settings(self.providers, self.binding_device[1],
                                      cache_root() / "compiled" / "onnxruntime-tensorrt")
        session = self.ort.InferenceSession(str(path), options, providers=providers)
        check_providers_in_use(session.get_providers(), self.device)
        return session

    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        value, jacobian = self._run(self.keypoints_session, {"frame": self._bindable(frames)})
        return Keypoints(value, jacobian)

    def render_prepared(self, source: dict[str, torch.Tensor], driving: Keypoints) -> torch.Tensor:
        inputs = dict(source, value=self._bindable(driving.value), jacobian=self._bindable(driving.jacobian))
        (frame,) = self._run(self.render_session, inputs)
        return frame

    def prepare_source(self, source: SourceState) -> dict[str, torch.Tensor]:
        """The source as the render graph's inputs (float32, contiguous, on the model's device), made once per avatar."""
        return {name: self._bindable(tensor) for name, tensor in zip(SOURCE_INPUTS, flatten_source(source))}

    def _run(self, session, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run ``session`` on tensors where they lie, host or GPU memory: nothing is copied through numpy or the host.

        Inputs are bound by address; the outputs are allocated here, on the
        model's device, at the (static) shapes the graph declares, and bound
        the same way.  ONNX Runtime synchronises its own stream before
        returning; PyTorch's is synchronised before the run, since the inputs
        may still be being written on it.
        """
        kind, index = self.binding_device
        binding = session.io_binding()
        for name, tensor in inputs.items():
            binding.bind_input(name, kind, index, np.float32, list(tensor.shape), tensor.data_ptr())
        outputs = [torch.empty(meta.shape, dtype=torch.float32, device=self.device) for meta in session.get_outputs()]
        for meta, output in zip(session.get_outputs(), outputs):
            binding.bind_output(meta.name, kind, index, np.float32, list(output.shape), output.data_ptr())
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return outputs

    def _bindable(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(device=self.device, dtype=torch.float32).contiguous()

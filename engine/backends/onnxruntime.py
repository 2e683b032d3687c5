"""ONNX Runtime: the per-frame modules exported to ONNX (opset 17), run by the best provider present.

Providers are tried in the order TensorRT, CUDA, CPU.  The graphs are
exported by :mod:`engine.export` and cached (see
:mod:`engine.backends.artifacts`); a file that fails to load is rebuilt.
``python -m engine.tensorrt_onnx_ops`` checks that TensorRT's ONNX parser
takes them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..export import ONNX_OPSET, SOURCE_INPUTS, export_keypoints_onnx, export_render_onnx, flatten_source
from ..generator import SourceState
from ..motion import Keypoints
from .artifacts import artifact_path, build_atomically, code_fingerprint, device_description, library_version
from .base import Backend, BackendUnavailable, weights_fingerprint

PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = {"cpu": ("float32",), "cuda": ("float32",)}

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        try:
            import onnxruntime
        except ImportError:
            return 'onnxruntime is not installed: pip install -e ".[onnx]"'
        if device.type == "cuda" and not {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(
                onnxruntime.get_available_providers()):
            return "this onnxruntime has no GPU provider (pip install onnxruntime-gpu)"
        return super().unavailable_reason(device)

    def __init__(self, model, precision: str):
        super().__init__(model, precision)
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendUnavailable(f"onnxruntime is not installed ({error}); pip install -e \".[onnx]\"") from None
        self.ort = onnxruntime
        available = onnxruntime.get_available_providers()
        wanted = PROVIDERS if model.device.type == "cuda" else ("CPUExecutionProvider",)
        self.providers = [p for p in wanted if p in available]
        if not self.providers:
            raise BackendUnavailable(f"onnxruntime offers none of {list(wanted)} (it has {available})")
        key = dict(weights=weights_fingerprint(model), code=code_fingerprint(), config=repr(model.config),
                   device=device_description(model.device), opset=str(ONNX_OPSET), torch=torch.__version__,
                   onnxruntime=onnxruntime.__version__, onnx=library_version("onnx"),
                   align_corners=str(model.generator.align_corners))
        self.keypoints_session = self._session("keypoints", key, lambda path: export_keypoints_onnx(model, path))
        self.render_session = self._session("render", key, lambda path: export_render_onnx(model, path))
        self.description = f"providers {self.providers}"

    def _session(self, part: str, key: dict, export):
        path = artifact_path(f"onnx-{part}", ".onnx", part=part, **key)
        if path.exists():
            try:
                return self._open(path)
            except Exception as error:  # a corrupt or incompatible file: rebuild it
                print(f"cached ONNX file {path} is unusable ({error}); rebuilding it", file=sys.stderr)
                path.unlink()
        try:
            build_atomically(path, export)
        except Exception as error:
            raise BackendUnavailable(f"ONNX export of the {part} graph failed: {type(error).__name__}: {error}") from error
        return self._open(path)

    def _open(self, path: Path):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads would spin and steal the cores that framing and PyTorch need between frames.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return self.ort.InferenceSession(str(path), options, providers=self.providers)

    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        value, jacobian = self.keypoints_session.run(None, {"frame": _numpy(frames)})
        return Keypoints(self._tensor(value), self._tensor(jacobian))

    def render_prepared(self, source: dict[str, np.ndarray], driving: Keypoints) -> torch.Tensor:
        feeds = dict(source)
        feeds.update(value=_numpy(driving.value), jacobian=_numpy(driving.jacobian))
        (frame,) = self.render_session.run(None, feeds)
        return self._tensor(frame)

    def prepare_source(self, source: SourceState) -> dict[str, np.ndarray]:
        """The source as ONNX Runtime feeds (host arrays), made once per avatar."""
        return {name: _numpy(tensor) for name, tensor in zip(SOURCE_INPUTS, flatten_source(source))}

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.model.device)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().contiguous().cpu().numpy()


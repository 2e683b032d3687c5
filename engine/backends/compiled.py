"""torch.compile (Inductor) of the per-frame modules; on CUDA with CUDA graphs ("reduce-overhead").

Compilation happens when the backend is built (one warm-up frame through each
module), so that a failure shows at start-up, where ``auto`` can fall back,
and not on the first live frame.  Each module is compiled whole
(``fullgraph=True``): a graph break is an error, not a silent slowdown.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sys

import torch

from ..errors import one_line
from ..generator import SourceState
from ..motion import Keypoints
from .base import Backend, BackendUnavailable, cast_source

log = logging.getLogger(__name__)


class CompileBackend(Backend):
    name = "compile"
    precisions = {"cpu": ("float32",), "cuda": ("float32", "float16", "bfloat16")}

    def __init__(self, model, precision: str):
        super().__init__(model, precision)
        kp_detector, render_step = model.kp_detector, model.render_step
        if self.dtype != torch.float32:
            kp_detector = copy.deepcopy(kp_detector).to(self.dtype)
            render_step = copy.deepcopy(render_step).to(self.dtype) if model.renders else None
        self.cuda_graphs = model.device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self.kp_detector = torch.compile(kp_detector, fullgraph=True, mode=mode)
        self.render_step = torch.compile(render_step, fullgraph=True, mode=mode) if model.renders else None
        height, width = model.frame_size
        frame = torch.rand(1, 3, height, width, device=model.device)
        log.info("compiling the %s with torch.compile (every start; minutes on a CPU)",
                 "keypoint detector and the render step" if model.renders else "keypoint detector")
        try:
            with torch.inference_mode():
                keypoints = self.detect_keypoints(frame)
                if model.renders:
                    self.render(model.generator.encode_source(frame, model.kp_detector(frame)), keypoints)
        except Exception as error:  # Inductor needs a C++ compiler on the CPU and Triton on CUDA
            raise BackendUnavailable(f"torch.compile failed: {one_line(error)}") from error

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        if device.type == "cuda":
            try:
                import triton  # noqa: F401
            except ImportError:
                return "Triton is not installed (it comes with the CUDA build of torch on Linux)"
        else:
            # Inductor's choice on the CPU: $CXX, else g++ (clang++ on macOS, cl on Windows).
            default = "cl" if sys.platform == "win32" else "clang++" if sys.platform == "darwin" else "g++"
            compiler = os.environ.get("CXX", default)
            if shutil.which(compiler) is None:
                return f"no C++ compiler: Inductor compiles with {compiler!r} on the CPU (set CXX to name another)"
        return super().unavailable_reason(device)

    def _own(self, tensor: torch.Tensor) -> torch.Tensor:
        # CUDA graphs reuse their output memory on the next replay: hand out a copy.
        return tensor.clone() if self.cuda_graphs else tensor

    @torch.inference_mode()
    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        keypoints = self.kp_detector(frames.to(self.dtype))
        return Keypoints(self._own(keypoints.value), self._own(keypoints.jacobian))

    @torch.inference_mode()
    def render_prepared(self, source: SourceState, driving: Keypoints) -> torch.Tensor:
        return self._own(self.render_step(source, driving).float())

    def prepare_source(self, source: SourceState) -> SourceState:
        return cast_source(source, self.dtype)

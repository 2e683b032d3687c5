"""Eager PyTorch: float32 anywhere; float16 or bfloat16 on CUDA (a half-precision copy of the networks).

In half precision the convolutions run in 16 bits and the coordinate work
(keypoint expectations, motions, sampling) stays float32: see
:class:`engine.keypoint_detector.KeypointDetector` and
:meth:`engine.dense_motion.DenseMotionNetwork.forward`.
"""

from __future__ import annotations

import copy

import torch

from ..generator import SourceState
from ..motion import Keypoints
from .base import Backend, cast_source


class EagerBackend(Backend):
    name = "eager"
    precisions = {"cpu": ("float32",), "cuda": ("float32", "float16", "bfloat16")}

    def __init__(self, model, precision: str):
        super().__init__(model, precision)
        if self.dtype == torch.float32:
            self.kp_detector, self.render_step = model.kp_detector, model.render_step
        else:
            self.kp_detector = copy.deepcopy(model.kp_detector).to(self.dtype)
            self.render_step = copy.deepcopy(model.render_step).to(self.dtype) if model.renders else None

    @torch.inference_mode()
    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        return self.kp_detector(frames.to(self.dtype))

    @torch.inference_mode()
    def render_prepared(self, source: SourceState, driving: Keypoints) -> torch.Tensor:
        return self.render_step(source, driving).float()

    def prepare_source(self, source: SourceState) -> SourceState:
        return cast_source(source, self.dtype)

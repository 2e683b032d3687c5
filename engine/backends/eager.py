"""Eager PyTorch: float32 anywhere; float16 or bfloat16 on CUDA (a half-precision copy of the networks)."""

from __future__ import annotations

import copy

import torch

from ..generator import SourceState
from ..motion import Keypoints
from .base import Backend, cast_keypoints, cast_source


class EagerBackend(Backend):
    name = "eager"
    precisions = {"cpu": ("float32",), "cuda": ("float32", "float16", "bfloat16")}

    def __init__(self, model, precision: str):
        super().__init__(model, precision)
        if self.dtype == torch.float32:
            self.kp_detector, self.render_step = model.kp_detector, model.render_step
        else:
            self.kp_detector = copy.deepcopy(model.kp_detector).to(self.dtype)
            self.render_step = copy.deepcopy(model.render_step).to(self.dtype)

    @torch.inference_mode()
    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        return cast_keypoints(self.kp_detector(frames.to(self.dtype)), torch.float32)

    @torch.inference_mode()
    def render_prepared(self, source: SourceState, driving: Keypoints) -> torch.Tensor:
        return self.render_step(source, cast_keypoints(driving, self.dtype)).float()

    def prepare_source(self, source: SourceState) -> SourceState:
        return cast_source(source, self.dtype)

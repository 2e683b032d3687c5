"""The per-frame graphs as ``torch.export`` programs: what a compiler (TensorRT, ONNX) is handed."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .dense_motion import MotionSource
from .generator import SourceState
from .model import FirstOrderModel
from .motion import Keypoints

SOURCE_INPUTS = ("features", "source_image", "source_heatmaps", "source_value", "source_jacobian")


class PerFramePrograms(NamedTuple):
    """keypoints: frame (Bx3xHxW) -> Keypoints; render: (SourceState, Keypoints) -> Bx3xHxW."""

    keypoints: torch.export.ExportedProgram
    render: torch.export.ExportedProgram


@torch.no_grad()
def export_per_frame(model: FirstOrderModel, batch: int = 1) -> PerFramePrograms:
    """Export the keypoint detector and the render step with static shapes (the model's frame size).

    ``strict=True``: TorchDynamo traces the whole module or fails, so success
    means one graph each, with no graph break.
    """
    height, width = model.frame_size
    generator = torch.Generator().manual_seed(0)
    frame = torch.rand(batch, 3, height, width, generator=generator).to(model.device)
    source = model.generator.encode_source(frame[:1], model.kp_detector(frame[:1]))
    driving = model.kp_detector(frame)
    return PerFramePrograms(
        keypoints=torch.export.export(model.kp_detector, (frame,), strict=True),
        render=torch.export.export(model.render_step, (source, driving), strict=True),
    )


def aten_targets(program: torch.export.ExportedProgram) -> set[str]:
    """The ops of ``program`` lowered to core ATen, e.g. {"aten.convolution.default", "<built-in function getitem>"}."""
    lowered = program.run_decompositions()
    return {str(node.target) for node in lowered.graph.nodes if node.op == "call_function"}


class FlatRender(nn.Module):
    """The render step with flat tensor inputs (in the order of SOURCE_INPUTS, then value and jacobian): what ONNX
    export and TensorRT compile are handed."""

    def __init__(self, render_step: nn.Module):
        super().__init__()
        self.render_step = render_step

    def forward(self, features, source_image, source_heatmaps, source_value, source_jacobian, value, jacobian):
        source = SourceState(features, MotionSource(source_image, source_heatmaps, Keypoints(source_value, source_jacobian)))
        return self.render_step(source, Keypoints(value, jacobian))


def flatten_source(source: SourceState) -> tuple[torch.Tensor, ...]:
    motion = source.motion
    return (source.features, motion.image, motion.heatmaps, motion.keypoints.value, motion.keypoints.jacobian)

"""The per-frame graphs as ONNX files, and what the compilers share: flat render inputs, core-ATen op lists.

ONNX files use opset 17: ``grid_sample`` needs opset 16 or newer, and opset
20 renames its mode to "linear", which older TensorRT parsers reject.  They
come from the TorchScript-based exporter, which needs no onnxscript and is
the one the parity tests and the TensorRT parser check cover.

Exporting never changes the caller's modules: ``torch.onnx.export`` puts the
module it is given in eval mode and afterwards sets every submodule to that
module's former mode, so the wrappers here start in eval mode and every
submodule's own train/eval flag is put back as it was (:func:`modes_kept`).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .dense_motion import MotionSource
from .generator import SourceState
from .held_signals import held_stop_signals
from .model import FirstOrderModel
from .motion import Keypoints

SOURCE_INPUTS = ("features", "source_image", "source_heatmaps", "source_value", "source_jacobian")
KEYPOINT_INPUTS = ("value", "jacobian")
ONNX_OPSET = 17


def aten_targets(program: torch.export.ExportedProgram) -> set[str]:
    """The ops of ``program`` lowered to core ATen, e.g. {"aten.convolution.default", "<built-in function getitem>"}."""
    lowered = program.run_decompositions()
    return {str(node.target) for node in lowered.graph.nodes if node.op == "call_function"}


class FlatKeypoints(nn.Module):
    """The keypoint detector returning a plain (value, jacobian) tuple: what TensorRT compile is handed, since
    ``torch.export.save`` (which ``torch_tensorrt.save`` ends in) cannot serialise the Keypoints NamedTuple."""

    def __init__(self, kp_detector: nn.Module):
        super().__init__()
        self.kp_detector = kp_detector
        self.training = False  # the wrapper alone: the wrapped module keeps its own mode

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value, jacobian = self.kp_detector(frame)
        return value, jacobian


class FlatRender(nn.Module):
    """The render step with flat tensor inputs (in the order of SOURCE_INPUTS, then value and jacobian): what ONNX
    export and TensorRT compile are handed."""

    def __init__(self, render_step: nn.Module):
        super().__init__()
        self.render_step = render_step
        self.training = False  # the wrapper alone: the wrapped module keeps its own mode

    def forward(self, features, source_image, source_heatmaps, source_value, source_jacobian, value, jacobian):
        source = SourceState(features, MotionSource(source_image, source_heatmaps, Keypoints(source_value, source_jacobian)))
        return self.render_step(source, Keypoints(value, jacobian))


def flatten_source(source: SourceState) -> tuple[torch.Tensor, ...]:
    motion = source.motion
    return (source.features, motion.image, motion.heatmaps, motion.keypoints.value, motion.keypoints.jacobian)


@torch.no_grad()
def export_keypoints_onnx(model: FirstOrderModel, path: Path) -> None:
    """The keypoint detector as ONNX: input "frame" (1x3xHxW float32), outputs "value", "jacobian"."""
    frame = example_frame(model)
    with held_stop_signals(), _quiet_tracer(), modes_kept(model.kp_detector):
        torch.onnx.export(model.kp_detector, (frame,), str(path), opset_version=ONNX_OPSET, dynamo=False,
                          input_names=["frame"], output_names=list(KEYPOINT_INPUTS))


@torch.no_grad()
def export_render_onnx(model: FirstOrderModel, path: Path) -> None:
    """The render step as ONNX: inputs SOURCE_INPUTS then KEYPOINT_INPUTS (see :class:`FlatRender`), output "frame"."""
    _, source, keypoints = example_inputs(model)
    with held_stop_signals(), _quiet_tracer(), modes_kept(model.render_step):
        torch.onnx.export(FlatRender(model.render_step), (*flatten_source(source), *keypoints), str(path),
                          opset_version=ONNX_OPSET, dynamo=False, input_names=[*SOURCE_INPUTS, *KEYPOINT_INPUTS],
                          output_names=["frame"])


class ExampleInputs(NamedTuple):
    """What the per-frame graphs are traced, exported and compiled with: batch 1 at the model's frame size, on its
    device, float32, ordinary tensors (made under ``no_grad``, not ``inference_mode``: torch.export bakes inference
    tensors in as constants).

    frame: 1x3xHxW in [0, 1], drawn from EXAMPLE_SEED.  source: the frame encoded as the avatar
    (``generator.encode_source``), None for a model without a generator (``keypoints_only``).  driving: the frame's
    keypoints (1xKx2, 1xKx2x2), copies of those the source state holds: an exporter may merge an input passed
    twice into one, which would leave the graph reading the source keypoints as the driving ones.
    """

    frame: torch.Tensor
    source: SourceState | None
    driving: Keypoints


EXAMPLE_SEED = 0  # the same frame on every start: the same weights give the same exported graphs


def example_frame(model: FirstOrderModel) -> torch.Tensor:
    """The keypoint graph's example input, ``ExampleInputs.frame`` alone (nothing else is computed for it)."""
    height, width = model.frame_size
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(EXAMPLE_SEED)).to(model.device)


def example_inputs(model: FirstOrderModel) -> ExampleInputs:
    """The seeded example inputs of ``model``'s per-frame graphs (see :class:`ExampleInputs`); fresh tensors on
    every call, so a caller may cast or copy them as its graph needs."""
    frame = example_frame(model)
    with torch.no_grad():
        keypoints = model.kp_detector(frame)
        source = model.generator.encode_source(frame, keypoints) if model.renders else None
    return ExampleInputs(frame, source, Keypoints(*(tensor.clone() for tensor in keypoints)))


@contextlib.contextmanager
def modes_kept(module: nn.Module):
    """Put back, on leaving, the train/eval flag that ``module`` and each of its submodules had on entering."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training


@contextlib.contextmanager
def _quiet_tracer():
    """Silence what the exporter says about choices made on purpose.

    The tracer warns that shape comparisons become constants (true and
    intended: the shapes are static), and that the TorchScript-based exporter
    is deprecated (see the module docstring for why it is used).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        yield

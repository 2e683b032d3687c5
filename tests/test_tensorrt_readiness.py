"""TensorRT readiness without TensorRT: the per-frame graphs use only ops torch-tensorrt has converters for.

The converter list is read from torch-tensorrt's own source (its wheel, fetched
with pip download, or the file named by $TORCH_TENSORRT_WHEEL), never typed here.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from engine.export import aten_targets, export_per_frame
from engine.tensorrt_ops import converter_registry, download_wheel, unconvertible

SOURCE = '''
import operator
import torch
@dynamo_tensorrt_converter(torch.ops.aten.convolution.default, supports_dynamic_shapes=True)
@dynamo_tensorrt_converter(torch.ops.aten.grid_sampler)
def conv(*args): ...
@registry.dynamo_tensorrt_converter(key=operator.getitem)
def getitem(*args): ...
'''


def test_registry_is_read_from_the_decorators(tmp_path):
    wheel = tmp_path / "torch_tensorrt-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torch_tensorrt/dynamo/conversion/aten_ops_converters.py", SOURCE)
        archive.writestr("torch_tensorrt/other/ignored.py", "@dynamo_tensorrt_converter(torch.ops.aten.exp.default)\n")
    registry = converter_registry(wheel)
    assert registry == {"torch.ops.aten.convolution.default", "torch.ops.aten.grid_sampler", "operator.getitem"}
    targets = {"aten.convolution.default", "aten.grid_sampler.default", "aten.grid_sampler.out",
               "<built-in function getitem>", "aten.exp.default", "aten.convolution.out"}
    assert unconvertible(targets, registry) == ["aten.convolution.out", "aten.exp.default"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if os.environ.get("TORCH_TENSORRT_WHEEL"):
        return Path(os.environ["TORCH_TENSORRT_WHEEL"])
    try:
        return download_wheel(tmp_path_factory.mktemp("wheel"))
    except RuntimeError as error:
        pytest.skip(f"torch-tensorrt's wheel is not reachable here ({error}); set TORCH_TENSORRT_WHEEL to a copy")


def test_every_per_frame_op_has_a_torch_tensorrt_converter(small_model, wheel):
    registry = converter_registry(wheel)
    programs = export_per_frame(small_model)
    for name, program in programs._asdict().items():
        targets = aten_targets(program)
        assert "aten.convolution.default" in targets
        assert unconvertible(targets, registry) == [], f"{name} has ops torch-tensorrt cannot convert"
    assert "aten.grid_sampler_2d.default" in aten_targets(programs.render)

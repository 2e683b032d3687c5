"""TensorRT readiness without TensorRT: the per-frame graphs use only ops TensorRT's two front ends take.

torch-tensorrt's converter list is read from its own source (its wheel, fetched
with pip download, or the file named by $TORCH_TENSORRT_WHEEL); the ONNX
parser's from TensorRT itself where installed, else from onnx-tensorrt's
support matrix (downloaded, or the file named by $ONNX_TENSORRT_MATRIX).
Neither list is typed here.  The tests that need those lists are marked
network and run only with ``pytest --run-network`` (a copy named by the
variables above is used instead of a download); what needs no list runs by default.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from engine.backends.tensorrt import export_graph, graphs_to_compile
from engine.export import aten_targets
from engine.tensorrt_onnx_ops import (
    download_matrix,
    export_graphs,
    onnx_op_types,
    support_matrix,
    tensorrt_parser_errors,
    tensorrt_version,
    unsupported_by_matrix,
)
from engine.tensorrt_ops import (
    BACKEND_SOURCE,
    converter_registry,
    download_wheel,
    erased_in_lowering,
    signature_mismatches,
    strong_typing,
    torch_tensorrt_calls,
    unconvertible,
)

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


PASS_LIST = """
from .remove_assert_nodes import remove_assert_nodes
pre_lowering_pass_list = [remove_detach, remove_assert_nodes]
post_lowering_pass_list = [replace_fused_rms_norm, remove_unlisted_pass_is_not_here]
"""
REMOVE_ASSERTS = """
def remove_assert_nodes(gm, settings):
    for node in gm.graph.nodes:
        if node.target == torch.ops.aten._assert_scalar.default or node.target == torch.ops.aten._assert_tensor_metadata.default:
            gm.graph.erase_node(node)
"""


def test_ops_erased_by_listed_remove_passes_need_no_converter(tmp_path):
    wheel = tmp_path / "torch_tensorrt-0.0-py3-none-any.whl"
    passes = "torch_tensorrt/dynamo/lowering/passes/"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(passes + "_aten_lowering_pass.py", PASS_LIST)
        archive.writestr(passes + "remove_assert_nodes.py", REMOVE_ASSERTS)
        archive.writestr(passes + "remove_detach.py", "def remove_detach(gm, s):\n"
                         "    for node in gm.graph.nodes:\n        if node.target == torch.ops.aten.detach.default:\n"
                         "            gm.graph.erase_node(node)\n")
        archive.writestr(passes + "replace_fused_rms_norm.py", "def replace_fused_rms_norm(gm, s):\n"
                         "    if node.target == torch.ops.aten._fused_rms_norm.default:\n        gm.graph.erase_node(node)\n")
        archive.writestr(passes + "remove_unlisted.py", "if node.target == torch.ops.aten.exp.default: g.erase_node(node)\n")
    erased = erased_in_lowering(wheel)
    assert erased == {"torch.ops.aten._assert_scalar.default", "torch.ops.aten._assert_tensor_metadata.default",
                      "torch.ops.aten.detach.default"}
    targets = {"aten._assert_tensor_metadata.default", "aten._fused_rms_norm.default", "aten.exp.default"}
    assert unconvertible(targets, set(), erased) == ["aten._fused_rms_norm.default", "aten.exp.default"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if os.environ.get("TORCH_TENSORRT_WHEEL"):
        return Path(os.environ["TORCH_TENSORRT_WHEEL"])
    try:
        return download_wheel(tmp_path_factory.mktemp("wheel"))
    except RuntimeError as error:
        pytest.skip(f"torch-tensorrt's wheel is not reachable here ({error}); set TORCH_TENSORRT_WHEEL to a copy")


@pytest.fixture(scope="module")
def tensorrt_targets(small_model) -> dict[str, set[str]]:
    """The core-ATen ops of each graph handed to torch-tensorrt, as the backend exports it."""
    return {name: aten_targets(export_graph(module, inputs)) for name, (module, inputs) in
            graphs_to_compile(small_model).items()}


def test_the_graphs_for_tensorrt_lower_to_core_aten_whole(tensorrt_targets):
    for name in ("keypoints", "render"):
        # float16 convolutions, float32 coordinates
        assert {"aten.convolution.default", "aten._to_copy.default"} <= tensorrt_targets[name]
    assert "aten.grid_sampler_2d.default" in tensorrt_targets["render"]


@pytest.mark.network
def test_every_op_handed_to_torch_tensorrt_has_a_converter(tensorrt_targets, wheel):
    registry, erased = converter_registry(wheel), erased_in_lowering(wheel)
    for name in ("keypoints", "render"):
        assert unconvertible(tensorrt_targets[name], registry, erased) == [], f"{name}: ops without converter"


def test_the_graphs_for_tensorrt_survive_torch_export_save_and_load(small_model, tmp_path):
    """torch_tensorrt.save ends in torch.export.save, which cannot serialise every output type (the Keypoints
    NamedTuple, for one): each graph must come back from disk computing what it computed."""
    for name, (module, inputs) in graphs_to_compile(small_model).items():
        path = tmp_path / f"{name}.pt2"
        torch.export.save(export_graph(module, inputs), str(path))
        with torch.no_grad():
            expected, loaded = module(*inputs), torch.export.load(str(path)).module()(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        loaded = loaded if isinstance(loaded, tuple) else (loaded,)
        assert len(loaded) == len(expected)
        for a, b in zip(loaded, expected):
            torch.testing.assert_close(a, b)


def test_the_graphs_for_tensorrt_are_float16_with_float32_coordinates(small_model):
    graphs = graphs_to_compile(small_model)
    detector, (frame,) = graphs["keypoints"]
    assert frame.dtype == torch.float16 and {p.dtype for p in detector.parameters()} == {torch.float16}
    render, inputs = graphs["render"]
    assert [tensor.dtype for tensor in inputs] == [torch.float16, torch.float32, torch.float16] + [torch.float32] * 4
    assert {p.dtype for p in render.parameters()} == {torch.float16}
    value, jacobian = detector(frame)
    assert value.dtype == jacobian.dtype == torch.float32


CALLER = """
import torch_tensorrt
class Backend:
    def build(self, program, inputs, path):
        compiled = self.torch_tensorrt.dynamo.compile(program, arg_inputs=inputs, min_block_size=1)
        torch_tensorrt.save(compiled, path, output_format="exported_program", **{"retrace": False})
        return torch_tensorrt.load(path), torch_tensorrt.runtime.gone(), torch.export.load(path)
"""

API = """
def compile(exported_program, inputs=None, *, arg_inputs=None, min_block_size=5, **kwargs): ...
def helper(min_block_size, enabled_precisions): ...
"""


def test_calls_into_torch_tensorrt_are_found_with_their_keywords():
    assert torch_tensorrt_calls(CALLER) == {"dynamo.compile": {"arg_inputs", "min_block_size"},
                                            "save": {"output_format"}, "load": set(), "runtime.gone": set()}


def test_a_keyword_only_kwargs_would_swallow_is_a_mismatch(tmp_path):
    wheel = tmp_path / "torch_tensorrt-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torch_tensorrt/dynamo/_compiler.py", API)
        archive.writestr("torch_tensorrt/_compile.py", "def load(file_path, extra_files=None, **kwargs): ...\n")
        archive.writestr("torch_tensorrt/dynamo/backend/backends.py", "def load(path, enabled_precisions): ...\n")
    calls = {"dynamo.compile": {"arg_inputs", "min_block_size", "enabled_precisions"}, "load": {"extra_files"},
             "dynamo.load": set(), "save": set()}
    assert signature_mismatches(wheel, calls) == [
        f"torch_tensorrt.dynamo.compile: no parameter 'enabled_precisions' in {wheel.name}",
        f"torch_tensorrt.dynamo.load: no such function in {wheel.name}",
        f"torch_tensorrt.save: no such function in {wheel.name}",
    ]


def test_the_tensorrt_backend_calls_compile_save_and_load():
    calls = torch_tensorrt_calls(BACKEND_SOURCE.read_text())
    assert {"dynamo.compile", "save", "load"} <= set(calls)
    assert {"arg_inputs", "min_block_size", "timing_cache_path"} <= calls["dynamo.compile"]


@pytest.mark.network
def test_the_tensorrt_backend_calls_torch_tensorrt_as_its_release_defines(wheel):
    assert signature_mismatches(wheel, torch_tensorrt_calls(BACKEND_SOURCE.read_text())) == []
    assert strong_typing(wheel) is not None


COMPILE_2_12 = "def compile(exported_program, *, arg_inputs=None, use_explicit_typing=True, **kwargs): ...\n"
COMPILE_2_13 = "def compile(exported_program, *, arg_inputs=None, **kwargs): ...\n"
STRONGLY_TYPED = "flag |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)\n"


@pytest.mark.parametrize(("compile_source", "interpreter", "expected"), [
    (COMPILE_2_12, "", "dynamo.compile takes use_explicit_typing, passed as True"),
    (COMPILE_2_13, STRONGLY_TYPED, "dynamo.compile has no use_explicit_typing; every network is created STRONGLY_TYPED"),
    (COMPILE_2_13, "flag = 0\n", None),
])
def test_strong_typing_is_asked_for_or_built_in(tmp_path, compile_source, interpreter, expected):
    wheel = tmp_path / "torch_tensorrt-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torch_tensorrt/dynamo/_compiler.py", compile_source)
        archive.writestr("torch_tensorrt/dynamo/conversion/_TRTInterpreter.py", interpreter)
    assert strong_typing(wheel) == expected


@pytest.mark.network
def test_the_tensorrt_op_check_passes_from_the_command_line():
    """``python -m engine.tensorrt_ops`` as documented: the wheel matching torch (downloaded), the fixture's config."""
    config = Path(__file__).parent / "fixtures" / "fomm-parity-small" / "config.yaml"
    command = [sys.executable, "-m", "engine.tensorrt_ops", "--config", str(config)]
    if os.environ.get("TORCH_TENSORRT_WHEEL"):
        command += ["--wheel", os.environ["TORCH_TENSORRT_WHEEL"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every function exists and takes every keyword passed" in result.stdout
    assert "keypoints: " in result.stdout and "render: " in result.stdout and "NO CONVERTER" not in result.stdout


MATRIX = """
| Operator                  | Supported  | Supported Types | Restrictions |
|---------------------------|------------|-----------------|--------------|
| Conv                      | Y          | FP32, FP16, INT8 |
| GridSample                | Y          | FP32, FP16
| NonMaxSuppression         | Y [EXPERIMENTAL] | FP32, FP16 | inputs must be initializers
| Det                       | N          |
"""


def test_support_matrix_is_read_from_the_table_rows():
    matrix = support_matrix(MATRIX)
    assert matrix == {"Conv": True, "GridSample": True, "NonMaxSuppression": True, "Det": False}
    assert unsupported_by_matrix({"Conv", "GridSample", "Det", "Inverse"}, matrix) == ["Det", "Inverse"]
    with pytest.raises(ValueError, match="no operator rows"):
        support_matrix("# Supported ONNX Operators\n\nnothing here\n")


def test_ops_outside_the_onnx_domain_are_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    node = helper.make_node("Inverse", ["x"], ["y"], domain="com.microsoft")
    value = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph([node], "g", [value], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="com.microsoft::Inverse"):
        onnx_op_types(path)


@pytest.fixture(scope="module")
def onnx_graphs(small_model, tmp_path_factory) -> dict[str, Path]:
    return export_graphs(small_model, tmp_path_factory.mktemp("onnx"))


def test_the_onnx_graphs_hold_only_onnx_domain_ops(onnx_graphs):
    op_types = {name: onnx_op_types(path) for name, path in onnx_graphs.items()}
    assert "Conv" in op_types["keypoints"] and {"Conv", "GridSample"} <= op_types["render"]


@pytest.mark.skipif(tensorrt_version() is None, reason="TensorRT is not installed: its ONNX parser cannot be asked here")
def test_tensorrts_onnx_parser_takes_every_graph(onnx_graphs):
    for name, path in onnx_graphs.items():
        assert tensorrt_parser_errors(path) == [], f"TensorRT's parser refuses the {name} graph"


@pytest.mark.network
def test_every_onnx_op_is_marked_supported_in_onnx_tensorrts_matrix(onnx_graphs):
    if os.environ.get("ONNX_TENSORRT_MATRIX"):
        text = Path(os.environ["ONNX_TENSORRT_MATRIX"]).read_text()
    else:
        try:
            text = download_matrix()
        except RuntimeError as error:
            pytest.skip(f"onnx-tensorrt's support matrix is not reachable here ({error}); "
                        "set ONNX_TENSORRT_MATRIX to a copy of its docs/operators.md")
    for name, path in onnx_graphs.items():
        assert unsupported_by_matrix(onnx_op_types(path), support_matrix(text)) == [], f"{name} has ops the parser lacks"

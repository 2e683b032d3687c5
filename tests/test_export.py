"""The per-frame path exports whole: torch.export with no graph breaks and no host sync."""

from __future__ import annotations

import pytest
import torch

from engine.motion import Keypoints, make_motion_reference, transfer_motion

# Ops that would mean a host sync, a data-dependent shape or a matrix inverse in the per-frame graph.
FORBIDDEN_OPS = ("_local_scalar_dense", "item", "nonzero", "linalg_inv", "inverse", "masked_select", "unique")


def call_targets(program: torch.export.ExportedProgram) -> set[str]:
    return {str(node.target) for node in program.graph.nodes if node.op == "call_function"}


@pytest.fixture(scope="module")
def per_frame_inputs(small_model, small_inputs):
    source = torch.from_numpy(small_inputs["source"]).permute(2, 0, 1)[None].float() / 255
    driving = torch.from_numpy(small_inputs["driving"]).permute(0, 3, 1, 2).float() / 255
    state = small_model.encode_source(source)
    keypoints = small_model.detect_keypoints(driving[:1])
    reference = make_motion_reference(state.motion.keypoints, small_model.detect_keypoints(driving[1:2]), True)
    return driving[:1], state, keypoints, reference


def exported(module: torch.nn.Module, args: tuple) -> torch.export.ExportedProgram:
    return torch.export.export(module, args, strict=True)


def assert_clean(program: torch.export.ExportedProgram) -> None:
    targets = call_targets(program)
    bad = sorted(t for t in targets if any(f".{name}." in t or t.endswith(f".{name}") for name in FORBIDDEN_OPS))
    assert not bad, f"per-frame graph contains {bad}"


def test_keypoint_detector_exports_whole_and_matches(small_model, per_frame_inputs):
    frame = per_frame_inputs[0]
    program = exported(small_model.kp_detector, (frame,))
    assert_clean(program)
    got, expected = program.module()(frame), small_model.kp_detector(frame)
    assert isinstance(expected, Keypoints)
    torch.testing.assert_close(got[0], expected.value, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], expected.jacobian, rtol=0, atol=1e-6)


def test_render_step_exports_whole_and_matches(small_model, per_frame_inputs):
    _, state, keypoints, _ = per_frame_inputs
    program = exported(small_model.render_step, (state, keypoints))
    assert_clean(program)
    assert "aten.grid_sampler.default" in call_targets(program)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(state, keypoints), small_model.render_step(state, keypoints),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("part", ["kp_detector", "render_step", "transfer_motion"])
def test_no_graph_breaks(small_model, per_frame_inputs, part):
    frame, state, keypoints, reference = per_frame_inputs
    torch._dynamo.reset()
    target, args = {
        "kp_detector": (small_model.kp_detector, (frame,)),
        "render_step": (small_model.render_step, (state, keypoints)),
        "transfer_motion": (transfer_motion, (keypoints, reference, True)),
    }[part]
    with torch.no_grad():
        explanation = torch._dynamo.explain(target)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def module_states(model) -> dict[str, object]:
    """Every module's train/eval flag and every parameter and buffer (copied) of the networks a backend exports."""
    states = {}
    for prefix, network in (("kp_detector", model.kp_detector), ("generator", model.generator),
                            ("render_step", model.render_step)):
        states.update({f"{prefix}.{name}:training": module.training for name, module in network.named_modules()})
        states.update({f"{prefix}.{name}": tensor.detach().clone() for name, tensor in network.state_dict().items()})
    return states


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_exporting_leaves_the_callers_modules_as_they_were(fused, tmp_path):
    """ONNX export used to leave the generator in training mode (its BatchNorms then used batch statistics)."""
    from engine import load_model
    from engine.backends.tensorrt import PARTS, export_graph, graph_to_compile
    from engine.export import export_keypoints_onnx, export_render_onnx

    from .conftest import SMALL_PARITY_DIR

    model = load_model(SMALL_PARITY_DIR / "config.yaml", SMALL_PARITY_DIR / "checkpoint.pth.tar", fuse_layers=fused)
    model.generator.dense_motion_network.train()  # a mixed state must come back exactly as well
    before = module_states(model)
    assert before["generator.dense_motion_network:training"] and not before["generator.:training"]
    export_keypoints_onnx(model, tmp_path / "keypoints.onnx")
    export_render_onnx(model, tmp_path / "render.onnx")
    for part in PARTS:
        export_graph(*graph_to_compile(model, part))
    after = module_states(model)
    assert after.keys() == before.keys()
    changed = [name for name in before if not (torch.equal(before[name], after[name]) if isinstance(before[name], torch.Tensor)
                                               else before[name] == after[name])]
    assert changed == []


def test_every_input_of_the_compiled_render_graph_is_read(small_model):
    """torch.export merges a tensor passed twice into one input: the TensorRT render graph once read the source
    keypoints as the driving ones (its example inputs were the same tensors), and rendered every frame unmoved."""
    from engine.backends.tensorrt import export_graph, graph_to_compile

    program = export_graph(*graph_to_compile(small_model, "render"))
    user_inputs = program.graph_signature.user_inputs
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    assert len(user_inputs) == 7, user_inputs
    unread = [name for name in user_inputs if not placeholders[name].users]
    assert not unread, f"inputs the graph never reads: {unread}"

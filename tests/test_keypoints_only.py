"""``load_model(keypoints_only=True)``: the keypoint detector alone, as a remote client loads it.

It must detect the same keypoints as the full model on every backend the CPU
runs, carry the same fingerprint (the server compares it), hold no generator,
build no render graph, and refuse to render with a clear error.
"""

from __future__ import annotations

import pytest
import torch

from engine import EngineError, load_model
from engine.backends import backend_class
from engine.images import image_to_tensor
from live.remote.protocol import keypoint_detector_fingerprint

from .conftest import SMALL_PARITY_DIR
from .live_media import astronaut

CONFIG, CHECKPOINT = SMALL_PARITY_DIR / "config.yaml", SMALL_PARITY_DIR / "checkpoint.pth.tar"


@pytest.fixture(scope="module")
def full():
    return load_model(CONFIG, CHECKPOINT)


@pytest.mark.parametrize("backend, tolerance", [("eager", 0.0), ("onnxruntime", 1e-5), ("openvino", 1e-5),
                                                 ("compile", 1e-5)])
def test_the_keypoint_detector_alone_detects_what_the_full_model_does(tmp_path, monkeypatch, full, backend, tolerance):
    reason = backend_class(backend).unavailable_reason(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path))
    model = load_model(CONFIG, CHECKPOINT, backend=backend, keypoints_only=True)
    assert not model.renders and model.generator is None and model.render_step is None
    assert keypoint_detector_fingerprint(model) == keypoint_detector_fingerprint(full)
    frame = image_to_tensor(astronaut(), model.frame_size, model.device, "frame")
    mine, theirs = model.detect_keypoints(frame), full.detect_keypoints(frame)
    assert float((mine.value - theirs.value).abs().max()) <= tolerance
    assert float((mine.jacobian - theirs.jacobian).abs().max()) <= 10 * tolerance
    # Only the keypoint graph was exported or compiled.
    built = sorted(path.name.split("-")[1] for path in (tmp_path / "compiled").glob("*") if path.suffix != ".sha256")
    assert built == (["keypoints"] if backend in ("onnxruntime", "openvino") else []), built  # the others cache none
    assert model.describe().startswith(f"config keypoint detector on the CPU: backend {backend}, float32")
    with pytest.raises(EngineError, match="loaded with keypoints_only=True: it detects keypoints but has no generator"):
        model.encode_source(frame)
    with pytest.raises(EngineError, match="keypoints_only=True"):
        model.render(None, mine)


def test_random_weights_build_no_generator(monkeypatch):
    def no_generator(*args, **kwargs):
        raise AssertionError("a generator was built for a keypoints-only model")

    monkeypatch.setattr("engine.model.Generator", no_generator)
    model = load_model(CONFIG, None, keypoints_only=True)
    assert model.generator is None and model.networks == (model.kp_detector,)
    with pytest.raises(AssertionError, match="a generator was built"):  # what the default still builds
        load_model(CONFIG, None)


def test_auto_keeps_a_clients_keypoint_detector_in_float32(tmp_path, monkeypatch):
    # Where the CPU has bfloat16, auto would pick it for a full model; a client's keypoints stay float32.
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path))
    model = load_model(CONFIG, CHECKPOINT, backend="auto", keypoints_only=True)
    assert model.backend.precision == "float32", model.describe()


def test_random_weights_are_the_same_in_every_load_and_leave_the_callers_random_state_alone():
    # Benchmarks load random weights in separate processes: their compiled graphs must be found in the cache again,
    # and a remote client's detector must be the server's.
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    full = load_model(CONFIG, None)
    assert torch.equal(torch.rand(4), expected_next)
    again, detector_only = load_model(CONFIG, None), load_model(CONFIG, None, keypoints_only=True)
    for network, other in ((full.generator, again.generator), (full.kp_detector, again.kp_detector),
                           (full.kp_detector, detector_only.kp_detector)):
        theirs = other.state_dict()
        assert all(torch.equal(tensor, theirs[name]) for name, tensor in network.state_dict().items())

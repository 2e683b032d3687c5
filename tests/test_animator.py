"""The public Animator API: dtypes, calibration, avatar changes, input checks, and the cached per-frame path."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from engine import Animator, ImageError

from .test_parity import as_float


@contextmanager
def count_calls(*modules: torch.nn.Module):
    """Count forward calls of each module while the block runs; yields the list of counts."""
    counts = [0] * len(modules)
    handles = []
    for index, module in enumerate(modules):
        def hook(*_, index=index):
            counts[index] += 1
        handles.append(module.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def test_uint8_in_uint8_out_and_float_in_float_out(small_model, small_inputs):
    animator = Animator(small_model, small_inputs["source"])
    frame = animator(small_inputs["driving"][1])
    assert frame.dtype == np.uint8 and frame.shape == (256, 256, 3)
    as_float_frame = animator(as_float(small_inputs["driving"][1]))
    assert as_float_frame.dtype == np.float32 and as_float_frame.shape == (256, 256, 3)
    assert 0.0 <= as_float_frame.min() and as_float_frame.max() <= 1.0
    # The same frame through both paths: uint8 is the float result rounded.
    assert np.abs(frame.astype(np.int16) - np.round(as_float_frame * 255)).max() <= 1


def test_first_frame_is_the_reference_until_calibrated(small_model, small_inputs):
    driving = small_inputs["driving"]
    implicit = Animator(small_model, small_inputs["source"])
    explicit = Animator(small_model, small_inputs["source"])
    explicit.calibrate(driving[0])
    assert not implicit.calibrated and explicit.calibrated
    for frame in driving:
        np.testing.assert_array_equal(implicit(frame), explicit(frame))
    assert implicit.calibrated


def test_recalibration_changes_the_reference(small_model, small_inputs):
    driving = small_inputs["driving"]
    animator = Animator(small_model, small_inputs["source"])
    animator.calibrate(driving[0])
    before = animator(driving[2]).astype(np.int16)
    animator.calibrate(driving[2])
    after_on_reference = animator(driving[2]).astype(np.int16)
    animator.calibrate(driving[0])
    np.testing.assert_array_equal(animator(driving[2]).astype(np.int16), before)
    assert np.abs(before - after_on_reference).mean() > 1.0


def test_driving_equal_to_reference_renders_the_source_at_rest(small_model, small_inputs):
    """Relative motion with zero motion: the generator renders the source keypoints."""
    animator = Animator(small_model, small_inputs["source"])
    animator.calibrate(small_inputs["driving"][1])
    rest = animator(small_inputs["driving"][1])
    source = small_model.encode_source(torch.from_numpy(as_float(small_inputs["source"])).permute(2, 0, 1)[None])
    expected = small_model.render(source, source.motion.keypoints)[0].permute(1, 2, 0).numpy()
    assert np.abs(rest.astype(np.float32) / 255 - expected).max() <= 1 / 255


def test_changing_the_avatar_reencodes_only_the_source(small_model, small_inputs):
    driving = small_inputs["driving"]
    animator = Animator(small_model, small_inputs["source"])
    animator.calibrate(driving[0])
    new_avatar = np.ascontiguousarray(small_inputs["source"][:, ::-1])
    with count_calls(small_model.kp_detector, small_model.generator.first) as counts:
        animator.set_source(new_avatar)
    assert counts == [1, 1], "expected one keypoint detection (the avatar) and one source encoding"
    fresh = Animator(small_model, new_avatar)
    fresh.calibrate(driving[0])
    np.testing.assert_array_equal(animator(driving[2]), fresh(driving[2]))


def test_per_frame_path_never_touches_source_only_work(small_model, small_inputs):
    animator = Animator(small_model, small_inputs["source"])
    animator.calibrate(small_inputs["driving"][0])
    generator = small_model.generator
    source_only = [generator.first, *generator.down_blocks, generator.dense_motion_network.down]
    with count_calls(small_model.kp_detector, generator.dense_motion_network, *source_only) as counts:
        for frame in small_inputs["driving"]:
            animator(frame)
    detector, dense_motion, *source_work = counts
    assert detector == 3 and dense_motion == 3
    assert source_work == [0] * len(source_only)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((255, 256, 3), np.uint8), r"expected shape \(256, 256, 3\) \(height, width, RGB\), got \(255, 256, 3\)"),
        (np.zeros((256, 256, 4), np.uint8), r"got \(256, 256, 4\)"),
        (np.zeros((256, 256), np.uint8), r"got \(256, 256\)"),
        (np.zeros((256, 256, 3), np.float64), r"expected dtype uint8 or float32, got float64"),
        (np.zeros((256, 256, 3), np.int32), r"expected dtype uint8 or float32, got int32"),
        (np.full((256, 256, 3), 255.0, np.float32), r"must lie in \[0, 1\], got values in \[255, 255\]"),
        (np.full((256, 256, 3), -0.5, np.float32), r"must lie in \[0, 1\], got values in \[-0.5, -0.5\]"),
        (np.full((256, 256, 3), np.nan, np.float32), r"must lie in \[0, 1\]"),
        ([[0, 0, 0]], r"expected a numpy array \(HxWx3 RGB\), got list"),
    ],
    ids=["height", "channels", "gray", "float64", "int32", "float-0-255", "negative", "nan", "list"],
)
def test_bad_images_are_clear_errors(small_model, small_inputs, image, message):
    animator = Animator(small_model, small_inputs["source"])
    with pytest.raises(ImageError, match="driving frame: .*" + message):
        animator(image)
    with pytest.raises(ImageError, match="calibration frame: .*" + message):
        animator.calibrate(image)
    with pytest.raises(ImageError, match="source image: .*" + message):
        Animator(small_model, image)
    # A bad frame loses nothing: the animator still works.
    assert animator(small_inputs["driving"][0]).shape == (256, 256, 3)


def test_zero_movement_holds_the_avatar_at_rest(small_model, small_inputs):
    driving = small_inputs["driving"]
    still = Animator(small_model, small_inputs["source"], movement=0.0)
    still.calibrate(driving[0])
    rest = Animator(small_model, small_inputs["source"])
    rest.calibrate(driving[1])
    # With no movement every frame renders the source keypoints; only the jacobians still follow the face.
    moving = Animator(small_model, small_inputs["source"])
    moving.calibrate(driving[0])
    assert np.abs(still(driving[2]).astype(int) - rest(driving[1]).astype(int)).mean() < \
        np.abs(moving(driving[2]).astype(int) - rest(driving[1]).astype(int)).mean()
    still.movement = 1.0  # back to the original's motion
    np.testing.assert_array_equal(still(driving[2]), moving(driving[2]))


def test_smoothing_blends_each_frame_with_the_past(small_model, small_inputs):
    from engine import Keypoints

    driving = small_inputs["driving"]
    smooth = Animator(small_model, small_inputs["source"], smoothing=0.25)
    smooth.calibrate(driving[0])
    first = smooth.detect(driving[1])
    smooth.render(first)
    second = smooth.detect(driving[2])
    blended = smooth.render(second)
    plain = Animator(small_model, small_inputs["source"])
    plain.calibrate(driving[0])
    expected = plain.render(Keypoints(first.value * 0.25 + second.value * 0.75,
                                      first.jacobian * 0.25 + second.jacobian * 0.75))
    np.testing.assert_array_equal(blended, expected)
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\)"):
        smooth.smoothing = 1.0

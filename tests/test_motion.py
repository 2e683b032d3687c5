"""Motion math: properties of the pure functions in engine.motion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine import MotionError
from engine.motion import (
    Keypoints,
    convex_hull_area,
    inverse_2x2,
    make_motion_reference,
    movement_scale,
    transfer_motion,
)

NUM_KP = 10
coordinates = st.floats(-1, 1, allow_nan=False, width=32)


def jacobians(shape: tuple[int, ...]):
    """Jacobians R(angle) @ [[s1, shear], [0, s2]] with |s1|, |s2| in [0.5, 2]: |det| >= 0.25."""
    def build(angle, s1, s2, shear, signs):
        cos, sin = np.cos(angle), np.sin(angle)
        rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
        upper = np.zeros((*shape, 2, 2))
        upper[..., 0, 0], upper[..., 0, 1], upper[..., 1, 1] = s1 * signs, shear, s2
        return torch.from_numpy((rotation @ upper).astype(np.float32))

    def params(low, high):
        return arrays(np.float64, shape, elements=st.floats(low, high))

    signs = arrays(np.float64, shape, elements=st.sampled_from([-1.0, 1.0]))
    return st.builds(build, params(0, 2 * np.pi), params(0.5, 2), params(0.5, 2), params(-1, 1), signs)


def keypoints(batch: int = 1):
    """Random keypoints in [-1, 1]^2 with well-conditioned jacobians."""
    values = arrays(np.float32, (batch, NUM_KP, 2), elements=coordinates).map(torch.from_numpy)
    return st.builds(Keypoints, values, jacobians((batch, NUM_KP)))


def spread_keypoints():
    """Keypoints whose convex hull has a clear area, as a face's do: three near the corners of a triangle."""
    corners = torch.tensor([[-0.6, -0.6], [0.6, -0.6], [0.0, 0.6]])
    jitter = arrays(np.float32, (3, 2), elements=st.floats(-0.125, 0.125, width=32)).map(torch.from_numpy)
    return st.builds(
        lambda k, j: Keypoints(torch.cat([k.value[:, :-3], (corners + j)[None]], dim=1), k.jacobian),
        keypoints(),
        jitter,
    )


@settings(max_examples=50, deadline=None)
@given(jacobians((7,)))
def test_closed_form_inverse_matches_linalg(tensor):
    expected = torch.linalg.inv(tensor.double())
    assert torch.allclose(inverse_2x2(tensor).double(), expected, atol=1e-4, rtol=1e-4)
    identity = torch.matmul(inverse_2x2(tensor), tensor)
    assert torch.allclose(identity, torch.eye(2).expand(7, 2, 2), atol=1e-4)


@settings(max_examples=50, deadline=None)
@given(spread_keypoints(), spread_keypoints(), st.booleans())
def test_driving_equal_to_reference_leaves_source_unchanged(source, reference, adapt_scale):
    motion = make_motion_reference(source, reference, adapt_scale)
    moved = transfer_motion(reference, motion, relative=True)
    assert torch.allclose(moved.value, source.value, atol=1e-6)
    assert torch.allclose(moved.jacobian, source.jacobian, atol=1e-3, rtol=1e-3)


@settings(max_examples=30, deadline=None)
@given(keypoints(), keypoints(), keypoints(batch=3))
def test_absolute_motion_is_the_driving_pose(source, reference, driving):
    motion = make_motion_reference(source, reference, adapt_scale=False)
    moved = transfer_motion(driving, motion, relative=False)
    assert moved.value is driving.value and moved.jacobian is driving.jacobian


@settings(max_examples=30, deadline=None)
@given(spread_keypoints(), spread_keypoints(), st.floats(-0.3, 0.3), st.floats(-0.3, 0.3))
def test_relative_translation_is_scaled_by_alpha(source, reference, dx, dy):
    """Translating the driving face translates the avatar's keypoints by alpha times as much."""
    motion = make_motion_reference(source, reference, adapt_scale=True)
    shift = torch.tensor([dx, dy], dtype=torch.float32)
    moved = transfer_motion(Keypoints(reference.value + shift, reference.jacobian), motion, relative=True)
    assert torch.allclose(moved.value - source.value, (motion.scale * shift).expand_as(source.value), atol=1e-5)


def test_movement_scale_is_the_ratio_of_spreads():
    square = torch.tensor([[[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [0.0, 0.0]]])
    assert movement_scale(square, square) == pytest.approx(1.0)
    assert movement_scale(square, square * 0.5) == pytest.approx(2.0)
    assert movement_scale(square * 3, square) == pytest.approx(3.0)


def test_degenerate_reference_is_a_clear_error():
    face = torch.tensor([[[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]]])
    collapsed = torch.zeros(1, 3, 2)
    with pytest.raises(MotionError, match="reference keypoints are degenerate"):
        movement_scale(face, collapsed)


@pytest.mark.parametrize(
    "points, area",
    [
        ([[0, 0], [1, 0], [1, 1], [0, 1]], 1.0),
        ([[0, 0], [2, 0], [0, 2]], 2.0),
        ([[0, 0], [1, 1], [2, 2], [3, 3]], 0.0),  # collinear
        ([[0, 0], [0, 0], [1, 0]], 0.0),
        ([[0, 0], [4, 0], [4, 3], [0, 3], [1, 1], [2, 2], [3, 1]], 12.0),  # interior points ignored
    ],
)
def test_convex_hull_area_known_shapes(points, area):
    assert convex_hull_area(np.array(points, dtype=np.float32)) == pytest.approx(area)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (10, 2), elements=st.floats(-1, 1)), st.floats(0, 2 * math.pi), st.floats(0.1, 3))
def test_convex_hull_area_is_invariant_and_scales(points, angle, scale):
    area = convex_hull_area(points)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    assert convex_hull_area(points @ rotation.T + 0.3) == pytest.approx(area, abs=1e-9)
    assert convex_hull_area(points * scale) == pytest.approx(area * scale**2, abs=1e-9)
    interior = (points[:3].mean(axis=0, keepdims=True) + points[3:6].mean(axis=0, keepdims=True)) / 2
    assert convex_hull_area(np.vstack([points, interior])) == pytest.approx(area, abs=1e-9)
    # The hull contains every triangle of the points.
    a, b, c = points[0], points[1], points[2]
    triangle = 0.5 * abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
    assert area >= triangle - 1e-12

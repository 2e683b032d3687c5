"""Keypoints and the motion math that maps a driving pose onto the source.

Pure, batched torch functions.  Notation (FOMM paper, Sec. 3): ``x`` a
keypoint in [-1, 1]^2 (x = column, y = row), ``J`` its 2x2 jacobian; ``s`` the
source (avatar), ``d`` the current driving frame, ``ref`` the reference
(calibration) frame of the driving person.

- relative motion: x_new = x_s + alpha * (x_d - x_ref),  J_new = J_d J_ref^-1 J_s
- absolute motion: x_new = x_d,                          J_new = J_d
- alpha = sqrt(area(hull(x_s))) / sqrt(area(hull(x_ref))) with adapt-scale, else 1

Everything that depends only on the source and the reference (alpha and
J_ref^-1 J_s) is gathered once in a :class:`MotionReference`; per frame only
:func:`transfer_motion` runs, which has no host sync and no matrix inverse.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .errors import MotionError


class Keypoints(NamedTuple):
    """Keypoints of a batch of frames.

    value: BxKx2 float, (x, y) in [-1, 1]; jacobian: BxKx2x2 float (identity
    matrices for zero-order models, which estimate no jacobian).
    """

    value: torch.Tensor
    jacobian: torch.Tensor


class MotionReference(NamedTuple):
    """Per (source, reference) constants of relative motion transfer.

    source: keypoints of the avatar (batch 1); reference_value: 1xKx2 keypoints
    of the reference frame; scale: 0-d float tensor, alpha (1 without
    adapt-scale); jacobian_transfer: 1xKx2x2, J_ref^-1 J_s.
    """

    source: Keypoints
    reference_value: torch.Tensor
    scale: torch.Tensor
    jacobian_transfer: torch.Tensor


def inverse_2x2(matrices: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of ...x2x2 matrices: [[a, b], [c, d]]^-1 = [[d, -b], [-c, a]] / (ad - bc).

    Exports to any runtime (``torch.inverse`` has no ONNX op) and never syncs
    with the host.  Singular inputs give inf/nan, as ``torch.inverse`` would fail.
    """
    a, b = matrices[..., 0, 0], matrices[..., 0, 1]
    c, d = matrices[..., 1, 0], matrices[..., 1, 1]
    determinant = a * d - b * c
    rows = torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=-2)
    return rows / determinant.unsqueeze(-1).unsqueeze(-1)


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of Nx2 points (Andrew's monotone chain, float64); 0 if degenerate."""
    unique = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(unique) < 3:
        return 0.0

    def half_hull(ordered: np.ndarray) -> list[np.ndarray]:
        hull: list[np.ndarray] = []
        for point in ordered:
            while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) <= 0:
                hull.pop()
            hull.append(point)
        return hull[:-1]

    hull = np.array(half_hull(unique) + half_hull(unique[::-1]))
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def movement_scale(source_value: torch.Tensor, reference_value: torch.Tensor) -> float:
    """alpha = sqrt(hull area of the source keypoints / hull area of the reference keypoints).

    Both 1xKx2.  Runs on the host, once per (source, reference) pair.  Raises
    :class:`MotionError` when either set of keypoints spans no area.
    """
    areas = [convex_hull_area(v[0].detach().float().cpu().numpy()) for v in (source_value, reference_value)]
    if min(areas) <= 1e-12:
        which = "source" if areas[0] <= 1e-12 else "reference"
        raise MotionError(
            f"the {which} keypoints are degenerate (convex hull area {min(areas):.3g}): "
            "cannot adapt the movement scale; recalibrate on a frame that shows the face, or disable adapt_scale"
        )
    return float(np.sqrt(areas[0]) / np.sqrt(areas[1]))


def make_motion_reference(source: Keypoints, reference: Keypoints, adapt_scale: bool,
                          multiplier: float = 1.0) -> MotionReference:
    """Gather the constants of relative motion for one source (batch 1) and one reference frame (batch 1).

    multiplier: an extra factor on the movement (1 = the original's motion).
    """
    alpha = (movement_scale(source.value, reference.value) if adapt_scale else 1.0) * multiplier
    return MotionReference(
        source=source,
        reference_value=reference.value,
        scale=torch.tensor(alpha, dtype=source.value.dtype, device=source.value.device),
        jacobian_transfer=torch.matmul(inverse_2x2(reference.jacobian), source.jacobian),
    )


def smooth_keypoints(previous: Keypoints, current: Keypoints, strength: float) -> Keypoints:
    """Exponential smoothing: strength * previous + (1 - strength) * current, for strength in [0, 1)."""
    keep = 1.0 - strength
    return Keypoints(value=previous.value * strength + current.value * keep,
                     jacobian=previous.jacobian * strength + current.jacobian * keep)


def transfer_motion(driving: Keypoints, reference: MotionReference, relative: bool) -> Keypoints:
    """Driving keypoints (BxK...) -> the keypoints the generator renders the source at.

    relative=True moves the source keypoints by the driving person's motion
    since the reference frame (scaled by alpha) and composes the jacobians;
    relative=False uses the driving keypoints as they are.
    """
    if not relative:
        return driving
    value = reference.source.value + reference.scale * (driving.value - reference.reference_value)
    jacobian = torch.matmul(driving.jacobian, reference.jacobian_transfer)
    return Keypoints(value=value, jacobian=jacobian)

"""The dense motion network: from keypoints to a dense flow and an occlusion map.

Split in two so that the live path never recomputes what depends only on the
source: :meth:`DenseMotionNetwork.prepare_source` (once per avatar) and
:meth:`DenseMotionNetwork.forward` (per frame).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import DenseMotionConfig
from .layers import AntiAliasDownsample, Hourglass, cast, gaussian_heatmaps, make_coordinate_grid
from .motion import Keypoints, inverse_2x2


class MotionSource(NamedTuple):
    """What the dense motion network needs of the source, computed once per avatar.

    image: 1xCxhxw float32 in [0, 1], the source downsampled by ``scale_factor``
    (only ever sampled, in float32); heatmaps: 1xKxhxw in (0, 1], Gaussians
    around the source keypoints, in the dtype the network runs in; keypoints:
    the source keypoints (1xKx2, 1xKx2x2), float32.
    """

    image: torch.Tensor
    heatmaps: torch.Tensor
    keypoints: Keypoints


class MotionField(NamedTuple):
    """Output of the dense motion network for a batch of B driving poses.

    deformation: Bxhxwx2 float32, for each output pixel the source position to
    sample, in [-1, 1] grid_sample coordinates (x, y); occlusion: Bx1xhxw in
    (0, 1) in the network's dtype, or None for models without occlusion;
    masks: Bx(K+1)xhxw float32 softmax weights of the background and each
    keypoint's local motion.
    """

    deformation: torch.Tensor
    occlusion: Optional[torch.Tensor]
    masks: torch.Tensor


class DenseMotionNetwork(nn.Module):
    """Predicts the dense flow as a softmax-weighted mixture of K+1 local affine motions (paper Sec. 3.2)."""

    def __init__(self, config: DenseMotionConfig, num_kp: int, num_channels: int, estimate_occlusion_map: bool,
                 align_corners: bool):
        super().__init__()
        self.config = config
        self.align_corners = align_corners
        self.hourglass = Hourglass(
            config.block_expansion, (num_kp + 1) * (num_channels + 1), config.num_blocks, config.max_features
        )
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.occlusion = (
            nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=3) if estimate_occlusion_map else None
        )
        self.down = AntiAliasDownsample(num_channels, config.scale_factor) if config.scale_factor != 1 else None

    def prepare_source(self, source: torch.Tensor, keypoints: Keypoints) -> MotionSource:
        """source: 1xCxHxW in [0, 1] plus its keypoints -> the cached :class:`MotionSource` (dtypes as it says)."""
        image = self.down(source) if self.down is not None else source
        _, _, height, width = image.shape
        grid = make_coordinate_grid(height, width, torch.float32, image.device)
        value, jacobian = (cast(tensor, torch.float32) for tensor in keypoints)
        heatmaps = gaussian_heatmaps(value, grid, self.config.kp_variance)
        return MotionSource(image=cast(image, torch.float32), heatmaps=cast(heatmaps, self.dtype),
                            keypoints=Keypoints(value, jacobian))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the hourglass and its heads run in (the module's parameters')."""
        return self.mask.weight.dtype

    def sparse_motions(self, source: Keypoints, driving: Keypoints, grid: torch.Tensor) -> torch.Tensor:
        """The K+1 candidate motions T_k(z) = x_s + J_s J_d^-1 (z - x_d), identity first.

        source: batch 1 or B; driving: batch B; grid: hxwx2 float32 -> Bx(K+1)xhxwx2 float32.
        """
        source, driving = Keypoints(cast(source.value, torch.float32), cast(source.jacobian, torch.float32)), Keypoints(
            cast(driving.value, torch.float32), cast(driving.jacobian, torch.float32))
        affine = torch.matmul(source.jacobian, inverse_2x2(driving.jacobian))  # BxKx2x2
        offset = grid.unsqueeze(0).unsqueeze(0) - driving.value.unsqueeze(2).unsqueeze(2)  # BxKxhxwx2
        a = affine.unsqueeze(2).unsqueeze(2)  # BxKx1x1x2x2
        moved_x = a[..., 0, 0] * offset[..., 0] + a[..., 0, 1] * offset[..., 1]
        moved_y = a[..., 1, 0] * offset[..., 0] + a[..., 1, 1] * offset[..., 1]
        keypoint_motions = torch.stack([moved_x, moved_y], dim=-1) + source.value.unsqueeze(2).unsqueeze(2)
        batch = keypoint_motions.shape[0]
        identity = grid.unsqueeze(0).unsqueeze(0).expand(batch, 1, *grid.shape)
        return torch.cat([identity, keypoint_motions], dim=1)

    def forward(self, source: MotionSource, driving: Keypoints) -> MotionField:
        """Per-frame step: the cached source and B driving poses (normalised) -> :class:`MotionField`.

        The hourglass runs in the module's dtype (:attr:`dtype`); keypoints,
        motions, sampling, mask softmax and deformation run in float32 whatever
        it is: a 16-bit coordinate near the border is a multiple of 2^-11
        (float16) or 2^-8 (bfloat16), 1/64 or 1/8 of a pixel of a 64x64 map.
        """
        dtype = self.dtype
        _, channels, height, width = source.image.shape
        batch, num_kp = driving.value.shape[:2]
        grid = make_coordinate_grid(height, width, torch.float32, source.image.device)

        heatmaps = gaussian_heatmaps(cast(driving.value, torch.float32), grid, self.config.kp_variance)
        heatmaps = heatmaps - cast(source.heatmaps, torch.float32)
        heatmaps = torch.cat([heatmaps.new_zeros((batch, 1, height, width)), heatmaps], dim=1)  # background: none

        motions = self.sparse_motions(source.keypoints, driving, grid)  # Bx(K+1)xhxwx2
        images = cast(source.image, torch.float32).unsqueeze(1).expand(batch, num_kp + 1, channels, height, width)
        warped = F.grid_sample(
            images.reshape(batch * (num_kp + 1), channels, height, width),
            motions.reshape(batch * (num_kp + 1), height, width, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=self.align_corners,
        ).view(batch, num_kp + 1, channels, height, width)

        hourglass_input = torch.cat([heatmaps.unsqueeze(2), warped], dim=2).view(batch, -1, height, width)
        features = self.hourglass(cast(hourglass_input, dtype))
        masks = F.softmax(cast(self.mask(features), torch.float32), dim=1)
        deformation = (motions * masks.unsqueeze(-1)).sum(dim=1)
        occlusion = torch.sigmoid(self.occlusion(features)) if self.occlusion is not None else None
        return MotionField(deformation=deformation, occlusion=occlusion, masks=masks)

"""The keypoint detector: a frame in, K keypoints with jacobians out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import KeypointDetectorConfig
from .layers import AntiAliasDownsample, Hourglass, cast, make_coordinate_grid
from .motion import Keypoints


class KeypointDetector(nn.Module):
    """Frame -> :class:`Keypoints`.

    The frame is downsampled (``scale_factor``), passed through an hourglass,
    and a 7x7 conv predicts one heatmap per keypoint.  Each keypoint is the
    expectation of the coordinate grid under softmax(heatmap / temperature);
    each jacobian is the expectation, under the same distribution, of a 4-channel
    map (one shared map with ``single_jacobian_map``).  Paper Sec. 3, Eq. (5).

    The convolutions run in the module's dtype; the softmax and the
    expectations always run in float32, and keypoints are float32 whatever the
    module's dtype: a bfloat16 coordinate near the border is a multiple of
    2^-8 (half a pixel at 256x256), and the temperature (0.1) multiplies logit
    errors by ten.
    """

    def __init__(self, config: KeypointDetectorConfig):
        super().__init__()
        self.config = config
        self.predictor = Hourglass(
            config.block_expansion, config.num_channels, config.num_blocks, config.max_features
        )
        self.kp = nn.Conv2d(self.predictor.out_filters, config.num_kp, kernel_size=7, padding=config.pad)
        self.num_jacobian_maps = 1 if config.single_jacobian_map else config.num_kp
        if config.estimate_jacobian:
            self.jacobian = nn.Conv2d(
                self.predictor.out_filters, 4 * self.num_jacobian_maps, kernel_size=7, padding=config.pad
            )
            # Untrained, every jacobian is the identity (as the original initialises it).
            nn.init.zeros_(self.jacobian.weight)
            with torch.no_grad():
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(self.num_jacobian_maps))
        else:
            self.jacobian = None
        if config.scale_factor != 1:
            self.down = AntiAliasDownsample(config.num_channels, config.scale_factor)
        else:
            self.down = None

    def forward(self, frame: torch.Tensor) -> Keypoints:
        """frame: BxCxHxW RGB in [0, 1], in the module's dtype -> float32 Keypoints (BxKx2 in [-1, 1], BxKx2x2)."""
        if self.down is not None:
            frame = self.down(frame)
        features = self.predictor(frame)
        logits = cast(self.kp(features), torch.float32)
        batch, num_kp, height, width = logits.shape
        weights = F.softmax(logits.view(batch, num_kp, height * width) / self.config.temperature, dim=2)
        grid = make_coordinate_grid(height, width, torch.float32, logits.device).view(height * width, 2)
        value = (weights.unsqueeze(-1) * grid).sum(dim=2)
        if self.jacobian is None:
            eye = torch.eye(2, dtype=value.dtype, device=value.device)
            return Keypoints(value=value, jacobian=eye.expand(batch, num_kp, 2, 2))
        jacobian_maps = cast(self.jacobian(features), torch.float32).view(batch, self.num_jacobian_maps, 4, height * width)
        jacobian = (weights.unsqueeze(2) * jacobian_maps).sum(dim=-1)
        return Keypoints(value=value, jacobian=jacobian.view(batch, num_kp, 2, 2))

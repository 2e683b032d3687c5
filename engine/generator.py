"""The occlusion-aware generator, split into a per-avatar encoder and a per-frame renderer."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import GeneratorConfig
from .dense_motion import DenseMotionNetwork, MotionField, MotionSource
from .layers import DownBlock2d, PhaseGridConv2d, ResBlock2d, SameBlock2d, UpBlock2d, cast, hourglass_width
from .motion import Keypoints


class SourceState(NamedTuple):
    """Everything the per-frame path needs of one avatar, computed once by :meth:`Generator.encode_source`.

    features: 1xCxhxw float, the encoded source (first block + down blocks);
    motion: the dense motion network's cached inputs (downsampled source,
    source heatmaps, source keypoints).
    """

    features: torch.Tensor
    motion: MotionSource


class Generator(nn.Module):
    """Occlusion-aware generator (paper Sec. 3.3).

    The source is encoded (7x7 block, down blocks), warped by the dense flow,
    multiplied by the occlusion map, then decoded (residual bottleneck, up
    blocks, 7x7 conv, sigmoid).  The original computes the whole of it per
    frame; here :meth:`encode_source` runs once per avatar and :meth:`render`
    per frame: ``render(encode_source(source, kp_source), kp_driving)`` is the
    original's function.
    """

    def __init__(self, config: GeneratorConfig, align_corners: bool = True):
        super().__init__()
        self.config = config
        self.align_corners = align_corners
        self.dense_motion_network = DenseMotionNetwork(
            config.dense_motion, config.num_kp, config.num_channels, config.estimate_occlusion_map, align_corners
        )

        def width(level: int) -> int:
            return hourglass_width(config.block_expansion, config.max_features, level)

        self.first = SameBlock2d(config.num_channels, config.block_expansion, kernel_size=7, padding=3)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(width(i), width(i + 1), kernel_size=3, padding=1) for i in range(config.num_down_blocks)
        )
        self.up_blocks = nn.ModuleList(
            UpBlock2d(width(n), width(n - 1), kernel_size=3, padding=1)
            for n in range(config.num_down_blocks, 0, -1)
        )
        self.bottleneck = nn.Sequential()
        for i in range(config.num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(width(config.num_down_blocks), kernel_size=3, padding=1))
        self.final = nn.Conv2d(config.block_expansion, config.num_channels, kernel_size=7, padding=3)

    def fuse_upsampling(self) -> None:
        """Merge the decoder's nearest upsampling into its convolutions; call after folding BatchNorm.

        The two decoder up blocks run at full resolution and carry 9.7 of a
        frame's 44.7 GMAC; fused (:class:`engine.layers.NearestUpsampleConv2d`)
        they need 0.44x of that.  The last one hands its phase grid straight
        to the final 7x7 convolution (:class:`engine.layers.PhaseGridConv2d`),
        so the 64-channel full-resolution map is never interleaved.  The
        hourglass up blocks of the keypoint detector and the dense motion
        network stay as they are: they carry little work, and with their many
        channels at 2x2 to 32x32 pixels eager PyTorch runs them bound by weight
        traffic, which the 1.8x larger fused kernels make slower (measured on
        a 2-core CPU: fusing them too cost eager 15 ms per frame and saved ONNX
        Runtime 5 ms).
        """
        if not self.up_blocks or isinstance(self.final, PhaseGridConv2d):
            return
        for block in self.up_blocks[:-1]:
            block.fuse_upsampling()
        self.up_blocks[-1].fuse_upsampling(output="phase_grid")
        self.final = PhaseGridConv2d(self.final)

    def unfuse_upsampling(self) -> None:
        """Undo :meth:`fuse_upsampling` (to float32 rounding): plain nearest upsampling and 3x3 convolutions, for a
        compiler that runs those faster than the phase grids (OpenVINO's int8, see :mod:`engine.backends.openvino`)."""
        if not isinstance(self.final, PhaseGridConv2d):
            return
        for block in self.up_blocks:
            block.unfuse_upsampling()
        self.final = self.final.plain_conv()

    def encode_source(self, source: torch.Tensor, keypoints: Keypoints) -> SourceState:
        """source: 1xCxHxW float RGB in [0, 1] and its keypoints -> the cached :class:`SourceState`."""
        features = self.first(source)
        for block in self.down_blocks:
            features = block(features)
        return SourceState(features=features, motion=self.dense_motion_network.prepare_source(source, keypoints))

    def render(self, source: SourceState, driving: Keypoints) -> torch.Tensor:
        """Per-frame step: cached source + B normalised driving poses -> BxCxHxW float RGB in [0, 1]."""
        return self.decode(source.features, self.dense_motion_network(source.motion, driving))

    def decode(self, features: torch.Tensor, motion: MotionField) -> torch.Tensor:
        """Warp the encoded source (1xCxhxw) by B motion fields, mask occlusions, decode -> BxCxHxW in [0, 1]."""
        batch = motion.deformation.shape[0]
        out = self.warp(features.expand(batch, *features.shape[1:]), motion.deformation)
        if motion.occlusion is not None:
            occlusion = motion.occlusion
            if occlusion.shape[2:] != out.shape[2:]:
                occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear", align_corners=False)
            out = out * occlusion
        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out))

    def warp(self, image: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """Sample image (BxCxHxW) at deformation (Bxhxwx2, resized bilinearly to HxW if needed) -> BxCxHxW.

        Sampling runs in float32 and the result comes back in the image's dtype:
        16-bit sampling positions would blur and shift the warped features (see
        :meth:`DenseMotionNetwork.forward`).
        """
        height, width = image.shape[2:]
        deformation = cast(deformation, torch.float32)
        if deformation.shape[1:3] != (height, width):
            deformation = F.interpolate(
                deformation.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        warped = F.grid_sample(cast(image, torch.float32), deformation, mode="bilinear", padding_mode="zeros",
                               align_corners=self.align_corners)
        return cast(warped, image.dtype)


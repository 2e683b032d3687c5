"""The per-frame work of the original FOMM demo, rebuilt from our modules as a speed baseline.

Per driving frame the original demo runs the keypoint detector on the frame,
normalises the keypoints with two convex hulls computed on the host from a
device-to-host copy, and then the whole generator on the source image:
encoder, dense motion source terms, and the full-resolution "deformed" source
it returns for visualisation.  Layers are not fused (BatchNorm unfolded,
upsampling then 3x3 convolution).  This class does the same work, so that
timing it beside :class:`engine.Animator` in one run measures what caching
and fusing save.  It computes the same frames.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.images import image_to_tensor, tensor_to_image
from engine.model import FirstOrderModel
from engine.motion import Keypoints, make_motion_reference, transfer_motion


class OriginalStylePipeline:
    """Uncached per-frame animation of ``source_image`` (HxWx3 uint8), relative motion with adapt-scale."""

    def __init__(self, model: FirstOrderModel, source_image: np.ndarray):
        self.model = model
        self.source = image_to_tensor(source_image, model.frame_size, model.device, "source image")
        self.source_keypoints = model.detect_keypoints(self.source)
        self.reference: Keypoints | None = None

    def __call__(self, driving_frame: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 driving frame -> HxWx3 uint8 animated frame."""
        frame = image_to_tensor(driving_frame, self.model.frame_size, self.model.device, "driving frame")
        return tensor_to_image(self.model_step(frame), driving_frame.dtype)

    @torch.inference_mode()
    def model_step(self, frame: torch.Tensor) -> torch.Tensor:
        """1x3xHxW float driving frame on the device -> 1x3xHxW prediction, the original demo's way."""
        driving = self.model.kp_detector(frame)
        if self.reference is None:
            self.reference = driving
        # The demo's normalize_kp: both hulls on the host, every frame.
        motion = make_motion_reference(self.source_keypoints, self.reference, adapt_scale=True)
        generator = self.model.generator
        source_state = generator.encode_source(self.source, self.source_keypoints)
        field = generator.dense_motion_network(source_state.motion, transfer_motion(driving, motion, relative=True))
        prediction = generator.decode(source_state.features, field)
        # The demo's generator also returns the source warped at full resolution, every frame.
        generator.warp(self.source, field.deformation)
        return prediction

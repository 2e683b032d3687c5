"""Conversion between user images (HxWx3 numpy) and network tensors (1x3xHxW float).

The public API takes and returns RGB numpy arrays: uint8 in [0, 255], or
float32 in [0, 1].  The output dtype follows the input's.  Inputs are checked
here, at the boundary, so the networks only ever see valid tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ImageError


def image_to_tensor(image: np.ndarray, size: tuple[int, int], device: torch.device, what: str) -> torch.Tensor:
    """HxWx3 RGB numpy (uint8, or float32 in [0, 1]) -> 1x3xHxW float32 in [0, 1] on ``device``.

    ``size`` is the required (height, width); ``what`` names the image in errors.
    The uint8 frame is uploaded as it is and normalised on the device.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{what}: expected a numpy array (HxWx3 RGB), got {type(image).__name__}")
    expected_shape = (*size, 3)
    if image.shape != expected_shape:
        raise ImageError(
            f"{what}: expected shape {expected_shape} (height, width, RGB), got {image.shape}; "
            f"crop and resize the image to {size[0]}x{size[1]} first"
        )
    if image.dtype == np.uint8:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
        return tensor.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    if image.dtype == np.float32:
        low, high = float(image.min()), float(image.max())
        if not (0.0 <= low and high <= 1.0):  # also catches nan
            raise ImageError(f"{what}: float32 images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
        return tensor.permute(2, 0, 1).unsqueeze(0)
    raise ImageError(f"{what}: expected dtype uint8 or float32, got {image.dtype}")


def tensor_to_image(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """1x3xHxW float in [0, 1] -> HxWx3 numpy of ``dtype`` (uint8: rounded to [0, 255]; float32: as is)."""
    hwc = tensor[0].permute(1, 2, 0)
    if dtype == np.uint8:
        return hwc.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return hwc.float().cpu().numpy()

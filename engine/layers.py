"""Building blocks shared by the keypoint detector and the generator.

Attribute names (``conv``, ``norm``, ``down_blocks``, ``encoder`` ...) follow the
module tree of the released checkpoints, so their state dicts load unchanged.

Two rewrites make the blocks cheaper at inference without changing their
function (see ``FirstOrderModel.fuse_layers``): every block that ends a
convolution with BatchNorm can fold the (eval-mode) normalisation into the
convolution's weights (``fold_batchnorm()`` replaces ``norm`` with an identity
and rescales ``conv``), and an up block can then merge its nearest-neighbour
upsampling into its convolution (``fuse_upsampling()``, see
:class:`NearestUpsampleConv2d`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_batchnorm_into_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Rewrite ``conv`` in place so that ``conv(x) == norm(conv_before(x))`` in eval mode.

    BatchNorm in eval mode is the per-channel affine map
    ``y = (x - mean) * gamma / sqrt(var + eps) + beta``; scaling the output
    channels of the weight and bias by ``gamma / sqrt(var + eps)`` absorbs it.
    The arithmetic is done in float64 and rounded once.
    """
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    folded_weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    folded_bias = (bias - norm.running_mean.double()) * scale + norm.bias.double()
    conv.weight.data = folded_weight.to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(folded_bias.to(conv.weight.dtype), requires_grad=False)
    else:
        conv.bias.data = folded_bias.to(conv.bias.dtype)


# For each output phase a (row or column parity) of a nearest-upsample-then-3x3-conv, which of the
# 3 kernel taps land on each of the 2 input pixels it sees (input offsets -1, 0 for a = 0; 0, +1 for a = 1).
_PHASE_TAPS = torch.tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=torch.float64)


class NearestUpsampleConv2d(nn.Module):
    """``conv(F.interpolate(x, scale_factor=2, mode="nearest"))`` computed without the upsampling.

    x: BxCinxHxW -> BxCoutx(2H)x(2W), for a 3x3, padding-1, stride-1 ``conv``.
    Output pixel (2i + a, 2j + b) sees only input rows i - 1 + a .. i + a and
    columns j - 1 + b .. j + b (the upsampled map repeats each input pixel
    twice), so the 3x3 kernel collapses into one 2x2 kernel per output phase
    (a, b), summed from the original taps in float64.  One 2x2 convolution with
    4 * Cout outputs computes all four phases on a grid of (H+1)x(W+1)
    positions (the *phase grid*), which are then interleaved: 16 instead of 36
    multiply-adds per input pixel and channel pair, and no 4x larger
    upsampled map in memory.  Equal to the original up to float32 rounding
    (about 1e-6 relative).

    With ``output="phase_grid"`` the interleaving is left to the next layer
    (see :class:`PhaseGridConv2d`): the result is the phase grid,
    Bx(4*Cout)x(H+1)x(W+1), channels ordered (a, b, c), where phase (a, b)
    at grid position (r, s) is output pixel (2r - a, 2s - b); the positions
    that fall outside the output image are zero.
    """

    def __init__(self, conv: nn.Conv2d, output: str = "image"):
        super().__init__()
        if (conv.kernel_size, conv.padding, conv.stride, conv.dilation, conv.groups) != ((3, 3), (1, 1), (1, 1), (1, 1), 1):
            raise ValueError(f"NearestUpsampleConv2d needs a plain 3x3 convolution with padding 1, got {conv}")
        if output not in ("image", "phase_grid"):
            raise ValueError(f'output must be "image" or "phase_grid", got {output!r}')
        self.out_channels = conv.out_channels
        self.output = output
        taps = _PHASE_TAPS.to(conv.weight.device)
        weight = torch.einsum("aik,bjl,ockl->abocij", taps, taps, conv.weight.double())
        self.weight = nn.Parameter(weight.flatten(0, 2).to(conv.weight.dtype), requires_grad=False)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device)
        self.bias = nn.Parameter(bias.detach().repeat(4), requires_grad=False)

    def plain_conv(self) -> nn.Conv2d:
        """The 3x3 convolution this was made from (to float32 rounding): the per-phase kernels are
        ``M W M^T`` with ``M`` the 4x3 stack of both phases' tap sums, which has full column rank."""
        taps = _PHASE_TAPS.to(self.weight.device).flatten(0, 1)  # (a, i) x k
        inverse = torch.linalg.pinv(taps)  # k x (a, i)
        phases = self.weight.double().unflatten(0, (2, 2, self.out_channels))  # a, b, o, c, i, j
        weight = torch.einsum("kai,lbj,abocij->ockl", inverse.unflatten(1, (2, 2)), inverse.unflatten(1, (2, 2)), phases)
        conv = nn.Conv2d(weight.shape[1], self.out_channels, 3, padding=1, device=self.weight.device,
                         dtype=self.weight.dtype).requires_grad_(False)
        conv.weight.copy_(weight.to(self.weight.dtype))
        conv.bias.copy_(self.bias[:self.out_channels])
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        # Padding 1 puts input row -1 at grid row 0: phase a's pixel 2i + a is at grid row i + a.
        grid = F.conv2d(x, self.weight, self.bias, padding=1)
        phases = grid.unflatten(1, (2, 2, self.out_channels))
        if self.output == "phase_grid":
            return (phases * _inside_mask(height, width, grid.dtype, grid.device)).flatten(1, 3)
        aligned = [phases[:, a, b, :, a:a + height, b:b + width] for a in (0, 1) for b in (0, 1)]
        return F.pixel_shuffle(torch.stack(aligned, dim=2).flatten(1, 2), 2)


def _inside_mask(height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """2x2x1x(H+1)x(W+1): 1 where phase (a, b)'s grid position lies in the 2Hx2W image, else 0.

    Phase a's grid row r is image row 2r - a: row H of phase 0 and row 0 of phase 1 fall outside.
    Made of ones, zeros and concatenation only, ops that every exporter and TensorRT converter takes.
    """
    zero = torch.zeros(1, dtype=dtype, device=device)

    def inside(size: int) -> torch.Tensor:  # 2 x (size+1), one row per phase
        ones = torch.ones(size, dtype=dtype, device=device)
        return torch.stack([torch.cat([ones, zero]), torch.cat([zero, ones])])

    return inside(height)[:, None, None, :, None] * inside(width)[None, :, None, None, :]


class PhaseGridConv2d(nn.Module):
    """``conv`` applied to the image whose phase grid (see :class:`NearestUpsampleConv2d`) is the input.

    grid: Bx(4*Cin)x(H+1)x(W+1) -> BxCoutx(2H)x(2W), for a KxK, padding K//2,
    stride-1 ``conv``.  Output pixel (2i + p, 2j + q) at kernel offset dy
    reads image row 2i + p + dy, which is phase a = (p + dy) mod 2 at grid
    row i + (p + dy + a) / 2: one convolution on the grid, with 4 * Cout
    outputs (one per output phase) and a kernel of 2 * ceil(K/4) taps per side
(4x4 for 7x7), computes
    every output phase, then ``pixel_shuffle`` interleaves them.  The
    full-resolution Cin-channel image is never made; for the generator's
    last layer (64 channels in, 3 out, 7x7) that saves interleaving a
    64-channel 256x256 map and runs a convolution with 12 outputs instead of
    3, which convolution kernels use far better.  Equal to the original up
    to float32 rounding.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        size = conv.kernel_size[0]
        if (conv.kernel_size, conv.padding, conv.stride, conv.dilation, conv.groups) != (
                (size, size), (size // 2, size // 2), (1, 1), (1, 1), 1) or size % 2 == 0:
            raise ValueError(f"PhaseGridConv2d needs a plain KxK convolution, K odd, with padding K//2, got {conv}")
        half = size // 2
        self.first_offset = -(half // 2)  # grid offsets first_offset .. first_offset + taps - 1
        taps = (half + 2) // 2 - self.first_offset + 1
        out_channels, in_channels = conv.weight.shape[:2]
        weight = torch.zeros(out_channels, 2, 2, 2, 2, in_channels, taps, taps, dtype=conv.weight.dtype,
                             device=conv.weight.device)  # (o, p, q, a, b, c, row tap, column tap)
        for p in (0, 1):
            for a in (0, 1):
                for row_tap in range(taps):
                    dy = 2 * (row_tap + self.first_offset) - a - p
                    if abs(dy) > half:
                        continue
                    for q in (0, 1):
                        for b in (0, 1):
                            for column_tap in range(taps):
                                dx = 2 * (column_tap + self.first_offset) - b - q
                                if abs(dx) <= half:
                                    weight[:, p, q, a, b, :, row_tap, column_tap] = conv.weight[:, :, dy + half, dx + half]
        self.weight = nn.Parameter(weight.reshape(4 * out_channels, 4 * in_channels, taps, taps), requires_grad=False)
        bias = conv.bias if conv.bias is not None else torch.zeros(out_channels, device=conv.weight.device)
        self.bias = nn.Parameter(bias.detach().repeat_interleave(4), requires_grad=False)
        self.kernel_size = size

    def plain_conv(self) -> nn.Conv2d:
        """The KxK convolution this was made from (exactly: every one of its taps was copied, not summed)."""
        half, taps = self.kernel_size // 2, self.weight.shape[-1]
        out_channels, in_channels = self.weight.shape[0] // 4, self.weight.shape[1] // 4
        phases = self.weight.reshape(out_channels, 2, 2, 2, 2, in_channels, taps, taps)
        conv = nn.Conv2d(in_channels, out_channels, self.kernel_size, padding=half, device=self.weight.device,
                         dtype=self.weight.dtype).requires_grad_(False)
        # Phase (p, q) = (0, 0) with input phase a = -dy mod 2 reaches every row offset dy once (likewise columns).
        for dy in range(-half, half + 1):
            a = dy % 2
            row_tap = (dy + a) // 2 - self.first_offset
            for dx in range(-half, half + 1):
                b = dx % 2
                column_tap = (dx + b) // 2 - self.first_offset
                conv.weight[:, :, dy + half, dx + half] = phases[:, 0, 0, a, b, :, row_tap, column_tap]
        conv.bias.copy_(self.bias[::4])
        return conv

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(grid, self.weight, self.bias, padding=-self.first_offset), 2)


class ConvNormRelu(nn.Module):
    """conv -> BatchNorm -> ReLU, the body of the same, down and up blocks."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm: nn.Module = nn.BatchNorm2d(out_features, affine=True)

    def fold_batchnorm(self) -> None:
        """Absorb the eval-mode BatchNorm into ``conv`` (see :func:`fold_batchnorm_into_conv`)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            if not isinstance(self.conv, nn.Conv2d):
                raise RuntimeError("fold BatchNorm before fusing the upsampling: the fused convolution has no single kernel")
            fold_batchnorm_into_conv(self.conv, self.norm)
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class SameBlock2d(ConvNormRelu):
    """Resolution-preserving block: BxCinxHxW -> BxCoutxHxW."""


class DownBlock2d(ConvNormRelu):
    """Block that halves the resolution with a 2x2 average pool: BxCinxHxW -> BxCoutx(H/2)x(W/2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(super().forward(x), kernel_size=2)


class UpBlock2d(ConvNormRelu):
    """Block that doubles the resolution (nearest neighbour) before its conv: -> BxCoutx(2H)x(2W)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, padding: int):
        super().__init__(in_features, out_features, kernel_size, padding)
        self.upsample: nn.Module = nn.Upsample(scale_factor=2.0, mode="nearest")

    def fuse_upsampling(self, output: str = "image") -> None:
        """Merge the upsampling into ``conv`` (see :class:`NearestUpsampleConv2d` for ``output``); fold BatchNorm first."""
        if isinstance(self.upsample, nn.Upsample):
            self.conv = NearestUpsampleConv2d(self.conv, output)
            self.upsample = nn.Identity()

    def unfuse_upsampling(self) -> None:
        """Undo :meth:`fuse_upsampling`: the nearest upsampling, then the plain convolution."""
        if isinstance(self.conv, NearestUpsampleConv2d):
            self.conv = self.conv.plain_conv()
            self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.upsample(x))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(norm2(conv1(relu(norm1(x)))))).

    Only ``norm2`` directly follows a convolution and can be folded; ``norm1``
    acts on the residual stream and stays a (cheap) per-channel affine map.
    """

    def __init__(self, features: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(features, features, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(features, affine=True)
        self.norm2: nn.Module = nn.BatchNorm2d(features, affine=True)

    def fold_batchnorm(self) -> None:
        """Absorb ``norm2`` into ``conv1``."""
        if isinstance(self.norm2, nn.BatchNorm2d):
            fold_batchnorm_into_conv(self.conv1, self.norm2)
            self.norm2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


def hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    """Channel count of hourglass level ``level``: block_expansion * 2**level, capped at max_features."""
    return min(max_features, block_expansion * 2**level)


class Encoder(nn.Module):
    """Hourglass encoder: ``num_blocks`` down blocks, keeping every intermediate map."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(
                in_features if i == 0 else hourglass_width(block_expansion, max_features, i),
                hourglass_width(block_expansion, max_features, i + 1),
                kernel_size=3,
                padding=1,
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: BxCxHxW -> [x, x/2, x/4, ...], ``num_blocks + 1`` maps from fine to coarse."""
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: up blocks, each followed by concatenation of the encoder's skip map."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            multiplier = 1 if i == num_blocks - 1 else 2
            blocks.append(
                UpBlock2d(
                    multiplier * hourglass_width(block_expansion, max_features, i + 1),
                    hourglass_width(block_expansion, max_features, i),
                    kernel_size=3,
                    padding=1,
                )
            )
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """skips: the encoder's maps, fine to coarse -> Bx(out_filters)xHxW."""
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net: BxCinxHxW -> Bx(block_expansion + Cin)xHxW.  H and W must divide by 2**num_blocks."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class AntiAliasDownsample(nn.Module):
    """Gaussian blur then subsampling by ``1/scale`` (scale = 1/n): BxCxHxW -> BxCx(H*scale)x(W*scale).

    sigma = (1/scale - 1) / 2 and a (2*round(4*sigma)+1)^2 kernel, zero padded,
    as the released models were trained with (scale 0.25: sigma 1.5, 13x13).
    The kernel is the persistent buffer ``weight`` (it is stored in the
    checkpoints).  Blurring at full resolution and keeping every n-th pixel is
    computed directly as a strided convolution: the same sums, 1/n^2 the work.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        inverse = 1.0 / scale
        self.stride = int(round(inverse))
        sigma = (inverse - 1.0) / 2.0
        kernel_size = 2 * round(sigma * 4) + 1
        self.padding = kernel_size // 2
        taps = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
        profile = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = profile[:, None] * profile[None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, kernel_size, kernel_size).clone())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=self.channels)


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype``, with no op at all when it already is: float32 graphs then export without Cast nodes.

    Half-precision networks run their convolutions in 16 bits and their
    coordinate work in float32; this is the one place they switch.
    """
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def make_coordinate_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1], HxWx2 with [..., 0] = x (column) and [..., 1] = y (row).

    x = 2*j/(W-1) - 1: the align_corners=True convention the models were trained with.
    """
    xs = torch.arange(width, dtype=dtype, device=device) / (width - 1) * 2 - 1
    ys = torch.arange(height, dtype=dtype, device=device) / (height - 1) * 2 - 1
    return torch.stack([xs.view(1, width).expand(height, width), ys.view(height, 1).expand(height, width)], dim=-1)


def gaussian_heatmaps(keypoints: torch.Tensor, grid: torch.Tensor, variance: float) -> torch.Tensor:
    """Isotropic Gaussians exp(-|z - kp|^2 / (2 variance)) around each keypoint.

    keypoints: BxKx2 in [-1, 1]; grid: HxWx2 (see :func:`make_coordinate_grid`)
    -> BxKxHxW float in (0, 1].
    """
    offset = grid.unsqueeze(0).unsqueeze(0) - keypoints.unsqueeze(2).unsqueeze(2)
    return torch.exp(-0.5 * (offset**2).sum(-1) / variance)

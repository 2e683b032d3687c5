"""Building blocks: BatchNorm folding, upsampling fusion, anti-alias downsampling, coordinate conventions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.layers import (
    AntiAliasDownsample,
    NearestUpsampleConv2d,
    PhaseGridConv2d,
    SameBlock2d,
    UpBlock2d,
    fold_batchnorm_into_conv,
    make_coordinate_grid,
)


def randomised_batchnorm(features: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(features)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.1, 3.0)
    return norm.eval()


def test_folded_conv_equals_conv_then_batchnorm():
    conv, norm = nn.Conv2d(5, 7, 3, padding=1), randomised_batchnorm(7)
    x = torch.randn(2, 5, 16, 16)
    expected = norm(conv(x))
    fold_batchnorm_into_conv(conv, norm)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_block_folding_replaces_its_norm():
    block = SameBlock2d(3, 8, kernel_size=7, padding=3).eval()
    block.norm = randomised_batchnorm(8)
    x = torch.rand(1, 3, 32, 32)
    expected = block(x)
    block.fold_batchnorm()
    assert isinstance(block.norm, nn.Identity)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_only_residual_input_norms_survive_folding(small_model):
    remaining = [name for network in (small_model.kp_detector, small_model.generator)
                 for name, module in network.named_modules() if isinstance(module, nn.BatchNorm2d)]
    assert remaining and all(name.startswith("bottleneck.r") and name.endswith(".norm1") for name in remaining)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_upsample_conv_equals_upsample_then_conv(layout):
    conv = nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(2, 6, 5, 7).to(memory_format=layout)  # odd, non-square: every border phase is exercised
    expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    fused = NearestUpsampleConv2d(conv)
    assert fused.weight.shape == (4 * 5, 6, 2, 2)
    out = fused(x)
    assert out.shape == (2, 5, 10, 14)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_fused_upsample_conv_rejects_other_convolutions():
    with pytest.raises(ValueError, match="3x3 convolution with padding 1"):
        NearestUpsampleConv2d(nn.Conv2d(4, 4, 5, padding=2))


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_phase_grid_conv_equals_conv_on_the_interleaved_image(kernel_size):
    up, final = nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(5, 3, kernel_size, padding=kernel_size // 2)
    x = torch.randn(2, 6, 5, 7).to(memory_format=torch.channels_last)
    image = F.relu(up(F.interpolate(x, scale_factor=2.0, mode="nearest")))
    grid = F.relu(NearestUpsampleConv2d(up, output="phase_grid")(x))
    assert grid.shape == (2, 4 * 5, 6, 8)
    torch.testing.assert_close(grid[:, 5:10, :-1, 1:], image[:, :, 0::2, 1::2], rtol=1e-5, atol=1e-5)  # phase (0, 1)
    assert not grid[:, :5, -1].any() and not grid[:, 15:, 0].any()  # outside the image: zero
    out = PhaseGridConv2d(final)(grid)
    assert out.shape == (2, 3, 10, 14)
    torch.testing.assert_close(out, final(image), rtol=1e-5, atol=1e-5)


def test_phase_grid_conv_rejects_other_convolutions():
    with pytest.raises(ValueError, match="K odd"):
        PhaseGridConv2d(nn.Conv2d(4, 3, 4, padding=2))
    with pytest.raises(ValueError, match="padding K//2"):
        PhaseGridConv2d(nn.Conv2d(4, 3, 7, padding=0))


def test_up_block_fusion_keeps_the_function_and_needs_batchnorm_folded_first():
    block = UpBlock2d(4, 3, kernel_size=3, padding=1).eval()
    block.norm = randomised_batchnorm(3)
    x = torch.rand(1, 4, 8, 8)
    expected = block(x)
    block.fold_batchnorm()
    block.fuse_upsampling()
    assert isinstance(block.upsample, nn.Identity) and isinstance(block.conv, NearestUpsampleConv2d)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)

    unfolded = UpBlock2d(4, 3, kernel_size=3, padding=1).eval()
    unfolded.fuse_upsampling()
    with pytest.raises(RuntimeError, match="fold BatchNorm before fusing"):
        unfolded.fold_batchnorm()


def test_fused_model_fuses_only_the_generator_decoder(small_model):
    generator = small_model.generator
    fused = {name for network in (small_model.kp_detector, generator)
             for name, module in network.named_modules() if isinstance(module, (NearestUpsampleConv2d, PhaseGridConv2d))}
    last = len(generator.up_blocks) - 1
    assert fused == {f"up_blocks.{i}.conv" for i in range(last + 1)} | {"final"}
    assert [block.conv.output for block in generator.up_blocks] == ["image"] * last + ["phase_grid"]


FUSIONS = {"upsample-image": NearestUpsampleConv2d, "upsample-phase-grid": lambda conv: NearestUpsampleConv2d(conv, "phase_grid"),
           "phase-grid": PhaseGridConv2d}


@pytest.mark.parametrize("fusion, kernel_size", [("upsample-image", 3), ("upsample-phase-grid", 3), ("phase-grid", 3),
                                                 ("phase-grid", 5), ("phase-grid", 7)])
def test_plain_conv_gives_back_the_fused_convolution(fusion, kernel_size):
    conv = nn.Conv2d(6, 5, kernel_size, padding=kernel_size // 2)
    plain = FUSIONS[fusion](conv).plain_conv()
    assert (plain.kernel_size, plain.padding, plain.in_channels, plain.out_channels) == (
        conv.kernel_size, conv.padding, 6, 5)
    torch.testing.assert_close(plain.weight, conv.weight, rtol=0, atol=1e-7)
    torch.testing.assert_close(plain.bias, conv.bias, rtol=0, atol=0)


def test_unfused_generator_renders_what_the_fused_one_does(small_model, small_inputs):
    import copy

    fused = small_model.generator
    plain = copy.deepcopy(fused)
    plain.unfuse_upsampling()
    assert not any(isinstance(module, (NearestUpsampleConv2d, PhaseGridConv2d)) for module in plain.modules())
    assert all(isinstance(block.upsample, nn.Upsample) for block in plain.up_blocks)
    assert any(isinstance(module, PhaseGridConv2d) for module in fused.modules())  # the copy only
    frames = torch.from_numpy(small_inputs["driving"]).permute(0, 3, 1, 2).float() / 255
    source = frames[:1]
    with torch.no_grad():
        state = fused.encode_source(source, small_model.kp_detector(source))
        driving = small_model.kp_detector(frames)
        torch.testing.assert_close(plain.render(state, driving), fused.render(state, driving), rtol=0, atol=1e-5)


def test_antialias_kernel_and_strided_sampling():
    down = AntiAliasDownsample(3, 0.25)
    assert down.weight.shape == (3, 1, 13, 13)  # sigma 1.5 -> 2*round(6)+1 taps
    torch.testing.assert_close(down.weight.sum(dim=(1, 2, 3)), torch.ones(3))
    x = torch.rand(2, 3, 256, 256)
    blurred_then_sliced = F.conv2d(F.pad(x, (6, 6, 6, 6)), down.weight, groups=3)[:, :, ::4, ::4]
    out = down(x)
    assert out.shape == (2, 3, 64, 64)
    torch.testing.assert_close(out, blurred_then_sliced, rtol=1e-5, atol=1e-6)


def test_coordinate_grid_is_align_corners_true():
    grid = make_coordinate_grid(4, 5, torch.float32, torch.device("cpu"))
    assert grid.shape == (4, 5, 2)
    torch.testing.assert_close(grid[0, :, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))  # x along columns
    torch.testing.assert_close(grid[:, 0, 1], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))  # y along rows
    image = torch.rand(1, 2, 4, 5)
    identity = F.grid_sample(image, grid[None], align_corners=True)
    torch.testing.assert_close(identity, image, rtol=0, atol=1e-6)

"""Configs: every released architecture builds with the original parameter names and sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from engine import ConfigError, ModelConfig, load_model

from .conftest import CONFIGS, SMALL_PARITY_DIR

RELEASED = ["vox-256", "vox-adv-256", "taichi-256", "taichi-adv-256", "mgif-256", "bair-256", "fashion-256", "nemo-256"]


def millions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_every_released_config_is_shipped():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(RELEASED)


@pytest.mark.parametrize("name", RELEASED)
def test_released_architecture_matches_the_checkpoints(name):
    model = load_model(CONFIGS / f"{name}.yaml", None, fuse_layers=False)
    assert model.frame_size == (256, 256)
    # Sizes of the released networks, counted from vox-adv-cpk.pth.tar: 14.2 M and 45.6 M parameters, 37.7 M in dense
    # motion.
    assert millions(model.kp_detector) == pytest.approx(14.2, abs=0.1)
    assert millions(model.generator) == pytest.approx(45.6, abs=0.05)
    assert millions(model.generator.dense_motion_network) == pytest.approx(37.7, abs=0.05)
    generator_keys = model.generator.state_dict().keys()
    detector_keys = model.kp_detector.state_dict().keys()
    for key in ("dense_motion_network.hourglass.encoder.down_blocks.0.conv.weight", "bottleneck.r0.norm1.running_mean",
                "dense_motion_network.down.weight", "first.norm.num_batches_tracked", "final.weight"):
        assert key in generator_keys
    for key in ("kp.weight", "jacobian.weight", "down.weight", "predictor.decoder.up_blocks.4.conv.weight"):
        assert key in detector_keys
    jacobian_maps = 1 if name == "mgif-256" else 10
    assert model.kp_detector.jacobian.weight.shape == (4 * jacobian_maps, 32 + 3, 7, 7)


def test_full_original_config_with_training_sections_loads():
    config = ModelConfig.from_yaml(SMALL_PARITY_DIR / "config.yaml")
    assert config.kp_detector.block_expansion == 8
    assert config.generator.dense_motion.scale_factor == 0.25
    assert config.generator.estimate_occlusion_map is True


def write_config(tmp_path, mutate) -> str:
    document = yaml.safe_load((CONFIGS / "vox-adv-256.yaml").read_text())
    mutate(document)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def kp(**values):
    return lambda d: d["model_params"]["kp_detector_params"].update(values)


def common(**values):
    return lambda d: d["model_params"]["common_params"].update(values)


def generator(**values):
    return lambda d: d["model_params"]["generator_params"].update(values)


def dense(**values):
    return lambda d: d["model_params"]["generator_params"]["dense_motion_params"].update(values)


def dataset(value):
    return lambda d: d.update(dataset_params=value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("model_params"), r"section model_params: expected a mapping, found nothing"),
        (kp(blocks=5), r"unknown keys \['blocks'\]"),
        (lambda d: d["model_params"]["generator_params"].pop("max_features"), r"missing keys \['max_features'\]"),
        (common(num_kp="ten"), r"kp_detector_params: num_kp: expected a whole number >= 1, found 'ten'"),
        (common(num_kp=0), r"kp_detector_params: num_kp: expected a whole number >= 1, found 0"),
        (common(num_kp=10.0), r"num_kp: expected a whole number >= 1, found 10.0"),
        (common(num_channels=1), r"num_channels: expected 3, found 1"),
        (common(estimate_jacobian="yes"), r"estimate_jacobian: expected true or false, found 'yes'"),
        (kp(temperature=0), r"kp_detector_params: temperature: expected a finite number > 0, found 0.0"),
        (kp(temperature=float("nan")), r"kp_detector_params: temperature: expected a finite number > 0, found nan"),
        (kp(temperature=float("inf")), r"kp_detector_params: temperature: expected a finite number > 0, found inf"),
        (kp(block_expansion=0), r"kp_detector_params: block_expansion: expected a whole number >= 1, found 0"),
        (kp(pad=9), r"kp_detector_params: pad: expected a whole number from 0 to 3, found 9"),
        (kp(scale_factor=1e-9), r"does not fit kp_detector_params: scale_factor 1e-09 and num_blocks 5 need a height "
                                r"and width that are multiples of 32,000,000,000 \(the frame would shrink to nothing\)"),
        (kp(scale_factor=2), r"kp_detector_params: scale_factor: expected a finite number from 0 \(excluded\) to 1, found 2.0"),
        (generator(block_expansion=0), r"generator_params: block_expansion: expected a whole number >= 1, found 0"),
        (generator(num_down_blocks=12), r"frame_shape 256x256 does not fit generator_params: num_down_blocks 12 need a "
                                        r"height and width that are multiples of 4,096 \(the frame would shrink"),
        (generator(num_bottleneck_blocks=-1), r"num_bottleneck_blocks: expected a whole number >= 0, found -1"),
        (dense(scale_factor=0.3), r"dense_motion_params: scale_factor: expected 1/n"),
        (dense(kp_variance=float("-inf")), r"dense_motion_params: kp_variance: expected a finite number > 0, found -inf"),
        (dataset({"frame_shape": [256, 256]}), r"dataset_params.frame_shape: expected \[height, width, channels\]"),
        (dataset({"frame_shape": [256, 256, 1]}), r"frame_shape: expected .*3 \(RGB\) channels, found \[256, 256, 1\]"),
        (dataset({"frame_shape": [64, 64, 3]}), r"frame_shape 64x64 does not fit kp_detector_params: scale_factor 0.25 and "
                                                r"num_blocks 5 need a height and width that are multiples of 128"),
        (dataset({"frame_shape": [320, 256, 3]}), r"frame_shape 320x256 does not fit kp_detector_params"),
        (dataset([256, 256, 3]), r"config 'broken': dataset_params: expected a mapping, found list"),
        (lambda d: (kp(scale_factor=1 / 64, num_blocks=1)(d), dataset({"frame_shape": [128, 128, 3]})(d)),
         r"frame_shape 128x128 is too small for kp_detector_params: after scale_factor 0.015625 the detector sees 2x2 "
         r"pixels, and its 7x7 output convolutions \(pad 0\) need at least 8x8"),
    ],
    ids=["no-model-params", "unknown-key", "missing-key", "wrong-type", "num-kp-0", "num-kp-float", "grey",
         "jacobian-not-bool", "temperature-0", "temperature-nan", "temperature-inf", "kp-block-expansion-0", "pad",
         "scale-1e-9", "scale-2", "generator-block-expansion-0", "down-blocks-12", "bottleneck-negative", "bad-scale",
         "variance-inf", "bad-shape", "grey-frame", "frame-too-small", "frame-not-divisible", "dataset-list",
         "heatmaps-vanish"],
)
def test_invalid_config_is_a_clear_error(tmp_path, mutate, message):
    with pytest.raises(ConfigError, match=message):
        load_model(write_config(tmp_path, mutate), None)


def test_config_built_in_code_is_checked_too():
    config = ModelConfig.from_yaml(CONFIGS / "vox-adv-256.yaml")
    with pytest.raises(ConfigError, match=r"kp_detector_params: temperature: expected a finite number > 0, found nan"):
        dataclasses.replace(config.kp_detector, temperature=float("nan"))
    with pytest.raises(ConfigError, match=r"config 'vox-adv-256': dataset_params.frame_shape 32x32 does not fit"):
        dataclasses.replace(config, frame_size=(32, 32))


def test_smallest_frame_the_architecture_allows_renders(tmp_path):
    """128x128 is the smallest frame vox-adv-256's detector accepts (0.25 * 2**5 = 1/128): it loads and runs."""
    model = load_model(write_config(tmp_path, dataset({"frame_shape": [128, 128, 3]})), None)
    frame = torch.rand(1, 3, 128, 128)
    keypoints = model.detect_keypoints(frame)
    assert keypoints.value.shape == (1, 10, 2)
    assert model.render(model.encode_source(frame), keypoints).shape == (1, 3, 128, 128)


def test_missing_and_unparsable_config(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        ModelConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model_params: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ModelConfig.from_yaml(tmp_path / "bad.yaml")

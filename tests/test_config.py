"""Configs: every released architecture builds with the original parameter names and sizes."""

from __future__ import annotations

import pytest
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
    # Sizes of the released networks (FACTS.md): 14.2 M and 45.6 M parameters, 37.7 M in dense motion.
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


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("model_params"), r"section model_params: expected a mapping, found nothing"),
        (lambda d: d["model_params"]["kp_detector_params"].update(blocks=5), r"unknown keys \['blocks'\]"),
        (lambda d: d["model_params"]["generator_params"].pop("max_features"), r"missing keys \['max_features'\]"),
        (lambda d: d["model_params"]["common_params"].update(num_kp="ten"), r"num_kp must be a non-negative integer"),
        (lambda d: d["model_params"]["kp_detector_params"].update(temperature=0), r"temperature must be a positive"),
        (lambda d: d["model_params"]["generator_params"]["dense_motion_params"].update(scale_factor=0.3),
         r"scale_factor must be 1/n"),
        (lambda d: d["dataset_params"].update(frame_shape=[256, 256]), r"frame_shape must be \[height, width, chan"),
    ],
    ids=["no-model-params", "unknown-key", "missing-key", "wrong-type", "non-positive", "bad-scale", "bad-shape"],
)
def test_invalid_config_is_a_clear_error(tmp_path, mutate, message):
    with pytest.raises(ConfigError, match=message):
        load_model(write_config(tmp_path, mutate), None)


def test_missing_and_unparsable_config(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        ModelConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model_params: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ModelConfig.from_yaml(tmp_path / "bad.yaml")

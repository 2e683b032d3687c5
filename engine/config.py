"""Model configuration, read from the original FOMM YAML format.

The original configs keep the architecture under ``model_params``:
``common_params`` (shared by both networks), ``kp_detector_params`` and
``generator_params`` (with a nested ``dense_motion_params``).  The input size
comes from ``dataset_params.frame_shape`` (older configs call it
``image_shape``).  Every other section (training, discriminator, visualiser)
is accepted and ignored, so unmodified original config files load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class KeypointDetectorConfig:
    """Architecture of the keypoint detector.

    ``scale_factor`` is the input downsampling before the hourglass (0.25 maps
    256x256 to 64x64); ``pad`` is the padding of the two 7x7 output convs (0 in
    every released model, which makes the heatmaps 58x58).
    """

    num_kp: int
    num_channels: int
    estimate_jacobian: bool
    temperature: float
    block_expansion: int
    max_features: int
    num_blocks: int
    scale_factor: float = 1.0
    single_jacobian_map: bool = False
    pad: int = 0


@dataclass(frozen=True)
class DenseMotionConfig:
    """Architecture of the dense motion network inside the generator."""

    block_expansion: int
    max_features: int
    num_blocks: int
    scale_factor: float = 1.0
    kp_variance: float = 0.01


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the occlusion-aware generator."""

    num_kp: int
    num_channels: int
    block_expansion: int
    max_features: int
    num_down_blocks: int
    num_bottleneck_blocks: int
    dense_motion: DenseMotionConfig
    estimate_occlusion_map: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build both networks.

    ``frame_size`` is (height, width) of the frames the model was trained on;
    source and driving images must have this size.
    """

    name: str
    frame_size: tuple[int, int]
    kp_detector: KeypointDetectorConfig
    generator: GeneratorConfig

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelConfig":
        """Read an original-format YAML config; raises :class:`ConfigError`."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (expected a FOMM YAML config, e.g. configs/vox-adv-256.yaml)")
        try:
            document = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"config {path} is not valid YAML: {error}") from error
        return cls.from_dict(document, name=path.stem)

    @classmethod
    def from_dict(cls, document: Any, name: str) -> "ModelConfig":
        """Build from the parsed YAML document of an original config."""
        where = f"config {name!r}"
        document = _require_mapping(document, where)
        model = _require_mapping(document.get("model_params"), f"{where}: section model_params")
        common = _require_mapping(model.get("common_params"), f"{where}: model_params.common_params")
        kp_params = _require_mapping(model.get("kp_detector_params"), f"{where}: model_params.kp_detector_params")
        gen_params = dict(_require_mapping(model.get("generator_params"), f"{where}: model_params.generator_params"))
        dense_params = _require_mapping(
            gen_params.pop("dense_motion_params", None),
            f"{where}: model_params.generator_params.dense_motion_params",
        )
        common_fields = {"num_kp", "num_channels", "estimate_jacobian"}
        _check_keys(common, common_fields, common_fields, f"{where}: model_params.common_params")

        kp_detector = _build(KeypointDetectorConfig, {**kp_params, **common}, f"{where}: kp_detector_params")
        dense_motion = _build(DenseMotionConfig, dense_params, f"{where}: dense_motion_params")
        generator_fields = {k: v for k, v in common.items() if k != "estimate_jacobian"}
        generator = _build(
            GeneratorConfig,
            {**gen_params, **generator_fields, "dense_motion": dense_motion},
            f"{where}: generator_params",
        )
        _check_scale_factor(kp_detector.scale_factor, f"{where}: kp_detector_params")
        _check_scale_factor(dense_motion.scale_factor, f"{where}: dense_motion_params")
        return cls(name=name, frame_size=_frame_size(document, where), kp_detector=kp_detector, generator=generator)


def _frame_size(document: Mapping[str, Any], where: str) -> tuple[int, int]:
    dataset = document.get("dataset_params") or {}
    shape = dataset.get("frame_shape", dataset.get("image_shape", [256, 256, 3]))
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ConfigError(f"{where}: dataset_params.frame_shape must be [height, width, channels], got {shape!r}")
    return shape[0], shape[1]


def _check_scale_factor(scale: float, where: str) -> None:
    """The anti-alias downsampling keeps every n-th pixel: scale must be 1 or 1/n."""
    inverse = 1.0 / scale
    if scale > 1.0 or abs(inverse - round(inverse)) > 1e-6:
        raise ConfigError(f"{where}: scale_factor must be 1/n for a whole number n (1, 0.5, 0.25, ...), got {scale}")


def _require_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        found = "nothing" if value is None else type(value).__name__
        raise ConfigError(f"{where}: expected a mapping, found {found}")
    return value


def _check_keys(given: Mapping[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(set(given) - allowed)
    missing = sorted(required - set(given))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected only {sorted(allowed)}")
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")


def _build(config_type: type, values: Mapping[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    required = {name for name, f in fields.items() if f.default is dataclasses.MISSING}
    _check_keys(values, set(fields), required, where)
    converted = {}
    for key, value in values.items():
        expected = fields[key].type
        if expected == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        if expected == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{where}: {key} must be a non-negative integer, got {value!r}")
        if expected == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{where}: {key} must be a positive number, got {value!r}")
            value = float(value)
        converted[key] = value
    return config_type(**converted)

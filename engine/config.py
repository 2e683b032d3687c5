"""Model configuration, read from the original FOMM YAML format.

The original configs keep the architecture under ``model_params``:
``common_params`` (shared by both networks), ``kp_detector_params`` and
``generator_params`` (with a nested ``dense_motion_params``).  The input size
comes from ``dataset_params.frame_shape`` (older configs call it
``image_shape``).  Every other section (training, discriminator, visualiser)
is accepted and ignored, so unmodified original config files load.

Values are checked, not only their types: every field has a :class:`Rule`
(kind, range, finite), and :class:`ModelConfig` checks that each network's
downsampling divides the frame and leaves maps to work on.  A bad value is a
:class:`ConfigError` naming the section and key, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What one config value may be: its kind, and the smallest and largest value allowed.

    ``low_open``: the smallest value itself is excluded (``temperature > 0``).
    Float values must also be finite (not nan, not inf).
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def expectation(self) -> str:
        """In words, e.g. "a whole number >= 1" or "a finite number > 0"."""
        if self.kind is bool:
            return "true or false"
        noun = "a whole number" if self.kind is int else "a finite number"
        if self.low is not None and self.low == self.high:
            return f"{self.low:g}"
        if self.low is not None and self.high is not None:
            return f"{noun} from {self.low:g}{' (excluded)' if self.low_open else ''} to {self.high:g}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        return noun

    def allows(self, value: Any) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or value <= self.high


def _field(rule: Rule, **default: Any):
    return dataclasses.field(metadata={"rule": rule}, **default)


_COUNT = Rule(int, low=1)  # num_kp, channel widths, block counts
_SWITCH = Rule(bool)
_RGB = Rule(int, low=3, high=3)  # images are HxWx3 RGB (engine.images)
_POSITIVE = Rule(float, low=0.0, low_open=True)
_SCALE = Rule(float, low=0.0, high=1.0, low_open=True)  # further: 1/n, and small enough for the frame (ModelConfig)


@dataclass(frozen=True)
class KeypointDetectorConfig:
    """Architecture of the keypoint detector.

    ``scale_factor`` is the input downsampling before the hourglass (0.25 maps
    256x256 to 64x64); ``pad`` is the padding of the two 7x7 output convs (0 in
    every released model, which makes the heatmaps 58x58).
    """

    num_kp: int = _field(_COUNT)
    num_channels: int = _field(_RGB)
    estimate_jacobian: bool = _field(_SWITCH)
    temperature: float = _field(_POSITIVE)
    block_expansion: int = _field(_COUNT)
    max_features: int = _field(_COUNT)
    num_blocks: int = _field(_COUNT)
    scale_factor: float = _field(_SCALE, default=1.0)
    single_jacobian_map: bool = _field(_SWITCH, default=False)
    pad: int = _field(Rule(int, low=0, high=3), default=0)

    def __post_init__(self):
        _check_values(self, "kp_detector_params")


@dataclass(frozen=True)
class DenseMotionConfig:
    """Architecture of the dense motion network inside the generator."""

    block_expansion: int = _field(_COUNT)
    max_features: int = _field(_COUNT)
    num_blocks: int = _field(_COUNT)
    scale_factor: float = _field(_SCALE, default=1.0)
    kp_variance: float = _field(_POSITIVE, default=0.01)

    def __post_init__(self):
        _check_values(self, "dense_motion_params")


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the occlusion-aware generator."""

    num_kp: int = _field(_COUNT)
    num_channels: int = _field(_RGB)
    block_expansion: int = _field(_COUNT)
    max_features: int = _field(_COUNT)
    num_down_blocks: int = _field(Rule(int, low=0))
    num_bottleneck_blocks: int = _field(Rule(int, low=0))
    dense_motion: DenseMotionConfig = dataclasses.field()
    estimate_occlusion_map: bool = _field(_SWITCH, default=False)

    def __post_init__(self):
        _check_values(self, "generator_params")


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

    def __post_init__(self):
        _check_fits_frame(self)

    @classmethod
    def load(cls, config: str | Path) -> "ModelConfig":
        """The config of a released model by name (``"vox-adv-256"``, shipped with the package), or read from a path."""
        return cls.from_yaml(config_path(config))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelConfig":
        """Read an original-format YAML config; raises :class:`ConfigError`."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (expected a FOMM YAML config, e.g. configs/vox-adv-256.yaml, "
                              f"or the name of a released model: {', '.join(released_models())})")
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

        kp_detector = _build(KeypointDetectorConfig, {**kp_params, **common}, where, "kp_detector_params")
        dense_motion = _build(DenseMotionConfig, dense_params, where, "dense_motion_params")
        generator_fields = {k: v for k, v in common.items() if k != "estimate_jacobian"}
        generator = _build(GeneratorConfig, {**gen_params, **generator_fields, "dense_motion": dense_motion}, where,
                           "generator_params")
        return cls(name=name, frame_size=_frame_size(document, where), kp_detector=kp_detector, generator=generator)


def released_configs_dir() -> Path:
    """Where the released models' configs are: the package ``engine.configs``.

    ``engine.configs`` is the repository's top-level ``configs/`` folder,
    shipped inside the package (``[tool.setuptools.package-dir]`` in
    pyproject.toml), so an installed wheel has them.  A source checkout used
    without installing it, or an editable install made before that mapping,
    has no such package: there the folder is found beside ``engine/``.
    """
    spec = importlib.util.find_spec("engine.configs")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if any(Path(location).glob("*.yaml")):
            return Path(location)
    return Path(__file__).resolve().parent.parent / "configs"


def released_models() -> list[str]:
    """Names of the released models whose configs ship with the package, e.g. ``vox-adv-256``."""
    return sorted(path.stem for path in released_configs_dir().glob("*.yaml"))


def config_path(config: str | Path) -> Path:
    """The YAML file of ``config``: an existing path as it is, else the shipped config of the model of that name.

    A bare name (no directory, no suffix) that is neither a file nor a released
    model raises :class:`ConfigError` listing the released models; any other
    path is returned as it is (reading it reports it missing).
    """
    path = Path(config)
    if path.is_file() or isinstance(config, Path) or path.name != str(config) or path.suffix:
        return path
    shipped = released_configs_dir() / f"{config}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"unknown model {config!r}: expected the name of a released model "
                      f"({', '.join(released_models())}) or the path of a FOMM YAML config")


def _frame_size(document: Mapping[str, Any], where: str) -> tuple[int, int]:
    dataset = document.get("dataset_params")
    dataset = {} if dataset is None else _require_mapping(dataset, f"{where}: dataset_params")
    key = "frame_shape" if "frame_shape" in dataset or "image_shape" not in dataset else "image_shape"
    shape = dataset.get(key, [256, 256, 3])
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape) and shape[2] == 3):
        raise ConfigError(f"{where}: dataset_params.{key}: expected [height, width, channels] with "
                          f"positive whole numbers and 3 (RGB) channels, found {shape!r}")
    return shape[0], shape[1]


def _check_values(config: Any, section: str) -> None:
    """Every field of a config dataclass against its :class:`Rule`; raises ConfigError naming the key."""
    for field in dataclasses.fields(config):
        rule = field.metadata.get("rule")
        value = getattr(config, field.name)
        if rule is not None and not rule.allows(value):
            raise ConfigError(f"{section}: {field.name}: expected {rule.expectation()}, found {value!r}")
    scale = getattr(config, "scale_factor", None)
    if scale is not None:
        _check_scale_factor(scale, section)


def _check_scale_factor(scale: float, section: str) -> None:
    """The anti-alias downsampling keeps every n-th pixel: scale must be 1 or 1/n."""
    inverse = 1.0 / scale
    if abs(inverse - round(inverse)) > 1e-6:
        raise ConfigError(f"{section}: scale_factor: expected 1/n for a whole number n (1, 0.5, 0.25, ...), found {scale}")


def _check_fits_frame(config: "ModelConfig") -> None:
    """Each network's downsampling must divide the frame exactly and leave maps large enough to work on.

    The keypoint detector and the dense motion network scale the frame by
    1/n, then their hourglass halves it ``num_blocks`` times and doubles it
    back, concatenating the maps of equal size: height and width must be
    multiples of n * 2**num_blocks.  The detector's 7x7 output convolutions
    (padding ``pad``) then need heatmaps of at least 2x2 (coordinates span
    [-1, 1] from the first to the last pixel).  The generator halves the
    frame ``num_down_blocks`` times and doubles it back to the frame size:
    multiples of 2**num_down_blocks.
    """
    height, width = config.frame_size
    where = f"config {config.name!r}: dataset_params.frame_shape {height}x{width}"
    kp, dense, generator = config.kp_detector, config.generator.dense_motion, config.generator
    networks = [
        ("kp_detector_params", kp.scale_factor, "num_blocks", kp.num_blocks),
        ("dense_motion_params", dense.scale_factor, "num_blocks", dense.num_blocks),
        ("generator_params", 1.0, "num_down_blocks", generator.num_down_blocks),
    ]
    for section, scale, blocks_key, blocks in networks:
        step = round(1 / scale) * 2**blocks
        if height % step or width % step:
            scaled = f"scale_factor {scale:g} and " if scale != 1 else ""
            raise ConfigError(
                f"{where} does not fit {section}: {scaled}{blocks_key} {blocks} need a height and width that are "
                f"multiples of {step:,}" + (" (the frame would shrink to nothing)" if step > max(height, width) else "")
            )
    seen = (height // round(1 / kp.scale_factor), width // round(1 / kp.scale_factor))
    needed = 8 - 2 * kp.pad  # 7x7 convolutions, then heatmaps of at least 2x2
    if min(seen) < needed:
        raise ConfigError(f"{where} is too small for kp_detector_params: after scale_factor {kp.scale_factor:g} the "
                          f"detector sees {seen[0]}x{seen[1]} pixels, and its 7x7 output convolutions (pad {kp.pad}) "
                          f"need at least {needed}x{needed}")


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


def _build(config_type: type, values: Mapping[str, Any], where: str, section: str):
    """A config dataclass from YAML ``section`` of config ``where``; whole numbers are accepted where a float is expected."""
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    required = {name for name, f in fields.items() if f.default is dataclasses.MISSING}
    _check_keys(values, set(fields), required, f"{where}: {section}")
    converted = {}
    for key, value in values.items():
        rule = fields[key].metadata.get("rule")
        if rule is not None and rule.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        converted[key] = value
    try:
        return config_type(**converted)
    except ConfigError as error:  # raised by the dataclass's own checks, which name the section and key
        raise ConfigError(f"{where}: {error}") from None

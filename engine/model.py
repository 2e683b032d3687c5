"""The loaded model: both networks, built from a config and filled from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .backends import Backend, select_backend
from .checkpoint import load_weights_strictly, read_checkpoint
from .errors import CheckpointError, EngineError
from .config import ModelConfig, released_models
from .generator import Generator, SourceState
from .keypoint_detector import KeypointDetector
from .motion import Keypoints
from .speed import cpu_speed
from .weights import cache_root, find_checkpoint
from .weights_cache import StateDicts, WeightsCache


class RenderStep(nn.Module):
    """The generator's per-frame part as a module of its own (``forward`` = :meth:`Generator.render`).

    This, with the :class:`KeypointDetector`, is what runs per frame and what
    is exported or compiled; it shares its parameters with the generator.
    """

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, source: SourceState, driving: Keypoints) -> torch.Tensor:
        """Cached source + B normalised driving poses -> Bx3xHxW float RGB in [0, 1]."""
        return self.generator.render(source, driving)


class FirstOrderModel:
    """Keypoint detector and generator in eval mode on one device, no gradients.

    Tensor API (all images Bx3xHxW float32 RGB in [0, 1], H x W = ``frame_size``):
    :meth:`detect_keypoints` (per frame), :meth:`encode_source` (once per
    avatar), :meth:`render` (per frame).  :class:`engine.Animator` wraps these
    for numpy images.

    ``generator`` None gives a model that only detects keypoints (``renders``
    False: a remote client's, whose frames render on a server); its backend
    builds no render graph, and encode_source / render raise EngineError.
    """

    def __init__(self, config: ModelConfig, kp_detector: KeypointDetector, generator: Generator | None):
        self.config = config
        self.kp_detector = kp_detector.eval().requires_grad_(False)
        self.generator = generator.eval().requires_grad_(False) if generator is not None else None
        self.render_step = RenderStep(self.generator).eval() if generator is not None else None
        self.backend: Backend | None = None  # chosen by use_backend (load_model calls it)

    @property
    def renders(self) -> bool:
        """Whether this model has its generator (False: loaded with ``keypoints_only``)."""
        return self.generator is not None

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        """The networks this model holds: the keypoint detector, then the generator if it has one."""
        return (self.kp_detector, self.generator) if self.renders else (self.kp_detector,)

    def use_backend(self, name: str = "eager", precision: str | None = None) -> Backend:
        """Run the per-frame computation on backend ``name`` ("auto": the fastest that works here)."""
        self.backend = select_backend(self, name, precision)
        return self.backend

    @property
    def device(self) -> torch.device:
        return next(self.kp_detector.parameters()).device

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the source and driving images."""
        return self.config.frame_size

    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        """Bx3xHxW -> float32 Keypoints (BxKx2 in [-1, 1], BxKx2x2), on the backend."""
        return self.backend.detect_keypoints(frames)

    @torch.inference_mode()
    def encode_source(self, source: torch.Tensor) -> SourceState:
        """1x3xHxW avatar -> the float32 state the per-frame path renders from (keypoints included).

        Encoding runs once per avatar, in eager float32; the backend converts the state to its own form
        on the first frame rendered from it.
        """
        self._check_renders()
        return self.generator.encode_source(source, self.backend.detect_keypoints(source))

    def render(self, source: SourceState, driving: Keypoints) -> torch.Tensor:
        """Cached source (from :meth:`encode_source`) + normalised driving keypoints (batch B) -> Bx3xHxW float32."""
        self._check_renders()
        return self.backend.render(source, driving)

    def _check_renders(self) -> None:
        if not self.renders:
            raise EngineError(f"this {self.config.name} model was loaded with keypoints_only=True: it detects keypoints "
                              "but has no generator to render with")

    def describe(self) -> str:
        """One start-up line: the device (GPU name, compute capability, memory), backend and precision."""
        device = self.device
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            where = f"{props.name} (compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
        else:
            where = self.backend.accelerator or "the CPU"
        if not self.renders:
            return f"{self.config.name} keypoint detector on {where}: backend {self.backend.name}, {self.backend.precision}"
        line = f"{self.config.name} on {where}: backend {self.backend.name}, {self.backend.precision}"
        if device.type == "cpu" and self.backend.accelerator is None:
            line += f" -- no GPU in use: {cpu_speed(self.backend.name, self.backend.precision)}"
            line += self.backend.faster_precision_hint()
        return line

    def to(self, device: str | torch.device) -> "FirstOrderModel":
        """Move the networks to ``device``, convolution weights in channels-last layout.

        Channels-last (NHWC) lets oneDNN and cuDNN pick their fastest convolution
        kernels (measured: 6-10% less time per frame on a 2-core AVX2 CPU).
        """
        for network in self.networks:
            network.to(device=device, memory_format=torch.channels_last)
        return self

    def fuse_layers(self) -> None:
        """Rewrite both networks for inference: the same function, less work per frame.

        Every BatchNorm that follows a convolution is folded into it, then the
        generator's up blocks merge their upsampling into their convolutions
        and the last one hands its output to the final convolution without
        interleaving it (:meth:`Generator.fuse_upsampling`).  The state dicts no longer match
        the checkpoint's afterwards.
        """
        for network in self.networks:
            for module in network.modules():
                if hasattr(module, "fold_batchnorm"):
                    module.fold_batchnorm()
        if self.renders:
            self.generator.fuse_upsampling()


def _released_checkpoint(config: ModelConfig) -> Path:
    if config.name not in released_models():
        raise CheckpointError(f"config {config.name!r} is not a released model ({', '.join(released_models())}), so "
                              "there are no released weights to find for it: pass the checkpoint's path "
                              "(or None for random weights)")
    return find_checkpoint(model=config.name)


Networks = tuple[KeypointDetector, "Generator | None"]
RANDOM_WEIGHTS_SEED = 0


def _build_networks(config: ModelConfig, align_corners: bool, keypoints_only: bool) -> Networks:
    # First: random weights then draw the same detector whether a generator is built after it or not.
    kp_detector = KeypointDetector(config.kp_detector)
    generator = None if keypoints_only else Generator(config.generator, align_corners=align_corners)
    return kp_detector, generator


def _random_networks(config: ModelConfig, align_corners: bool, keypoints_only: bool) -> Networks:
    """The networks with random weights drawn from RANDOM_WEIGHTS_SEED, the caller's random state left as it was.

    Every process then builds the same model: its compiled graphs come from the cache instead of being rebuilt
    (and stored again) on every start, and timings of separate runs compare like for like.
    """
    with torch.random.fork_rng(devices=[]):  # the CPU generator, the only one that initialises modules
        torch.default_generator.manual_seed(RANDOM_WEIGHTS_SEED)  # (torch.manual_seed would reseed CUDA's too)
        return _build_networks(config, align_corners, keypoints_only)


def _filled_networks(config: ModelConfig, state_dicts: StateDicts, align_corners: bool, keypoints_only: bool) -> Networks:
    """The networks built for ``config`` and filled strictly from ``state_dicts``; raises CheckpointError."""
    with torch.device("meta"):  # no random initialisation: every tensor comes from the state dicts
        kp_detector, generator = _build_networks(config, align_corners, keypoints_only)
    load_weights_strictly(kp_detector, state_dicts["kp_detector"], f"kp_detector of config {config.name!r}")
    if generator is not None:
        load_weights_strictly(generator, state_dicts["generator"], f"generator of config {config.name!r}")
    return kp_detector, generator


def _load_networks(config: ModelConfig, checkpoint: Path, align_corners: bool, keypoints_only: bool,
                   cache: WeightsCache | None) -> Networks:
    """The networks filled from the cache's copy of ``checkpoint`` if it has a good one, else from the checkpoint.

    A cached copy that does not fit is the copy's fault, not the checkpoint's:
    it is discarded and the checkpoint itself decides.  A checkpoint that
    loaded strictly is then copied into the cache.
    """
    cached = cache.read(checkpoint, config) if cache is not None else None
    if cached is not None:
        try:
            return _filled_networks(config, cached, align_corners, keypoints_only)
        except CheckpointError as error:
            cache.discard(cache.entry_path(checkpoint, config), str(error))
    state_dicts = read_checkpoint(checkpoint)
    networks = _filled_networks(config, state_dicts, align_corners, keypoints_only)
    if cache is not None:
        cache.write(checkpoint, config, state_dicts)
    return networks


class _ReleasedWeights:
    """Type of :data:`RELEASED_WEIGHTS`."""

    def __repr__(self) -> str:
        return "RELEASED_WEIGHTS"


RELEASED_WEIGHTS = _ReleasedWeights()
"""Default ``checkpoint`` of :func:`load_model`: the released weights of the model, where ``--download-weights`` puts them."""


def load_model(
    config: str | Path | ModelConfig,
    checkpoint: str | Path | None | _ReleasedWeights = RELEASED_WEIGHTS,
    device: str | torch.device = "cpu",
    *,
    align_corners: bool = True,
    fuse_layers: bool = True,
    weights_cache: bool = True,
    backend: str = "eager",
    precision: str | None = None,
    keypoints_only: bool = False,
) -> FirstOrderModel:
    """Build the networks of ``config`` and load ``checkpoint`` into them.

    config: the name of a released model (``"vox-adv-256"``, ``"taichi-256"``,
    ...: its config ships with the package, see :func:`engine.config.released_models`),
    a FOMM YAML config path, or a :class:`ModelConfig`.  checkpoint: by
    default the released weights of that model, found where
    ``run_live.py --download-weights`` puts them, then in the working
    directory (:func:`engine.weights.find_checkpoint`; a clear error says how
    to fetch them when they are in neither); or an original ``.pth.tar`` (or
    the same state dicts as ``.safetensors``), of which only the
    ``generator`` and ``kp_detector`` entries are used, strictly (every key
    used, none missing).  ``None`` keeps random weights, the same in every process (benchmarks and tests only).
    align_corners: the ``grid_sample`` convention; True is what the
    released models were trained with (torch < 1.3), False reproduces the
    unmodified original code on today's torch.  fuse_layers: fold
    BatchNorm into the preceding convolutions and merge each up block's
    upsampling into its convolution after loading (:meth:`FirstOrderModel.fuse_layers`).  weights_cache:
    read a ``.pth.tar`` from its safetensors copy in the cache (see
    :mod:`engine.weights_cache`), making that copy on the first load.
    backend: "eager", "compile", "onnxruntime", "tensorrt", or "auto" for the
    fastest that works here (see :mod:`engine.backends`); precision:
    "float32", "float16" or "bfloat16", None for the backend's default.
    keypoints_only: build, fill and hand the backend only the keypoint
    detector (a remote client's model, see ``run_live.py --remote``): no
    generator in memory, no render graph exported or compiled; the
    checkpoint's generator entry is read but not used or checked.
    """
    if not isinstance(config, ModelConfig):
        config = ModelConfig.load(config)
    if checkpoint is RELEASED_WEIGHTS:
        checkpoint = _released_checkpoint(config)
    if checkpoint is None:
        kp_detector, generator = _random_networks(config, align_corners, keypoints_only)
    else:
        checkpoint = Path(checkpoint)
        cache = WeightsCache(cache_root()) if weights_cache and checkpoint.suffix != ".safetensors" else None
        kp_detector, generator = _load_networks(config, checkpoint, align_corners, keypoints_only, cache)
    model = FirstOrderModel(config, kp_detector, generator)
    if fuse_layers:
        model.fuse_layers()
    model.to(device)
    model.use_backend(backend, precision)
    return model

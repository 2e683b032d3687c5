"""The interface every inference backend implements, and what they share.

A backend runs the per-frame computation: the keypoint detector on driving
frames, and the render step from the cached source state.  Encoding the
source stays in eager PyTorch (once per avatar); :meth:`Backend.prepare_source`
converts its result once, on the first frame rendered from it, into whatever
the backend consumes.  Inputs and
outputs are float32 torch tensors on the model's device whatever the
backend's internal precision, so callers never branch on the backend.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Iterable

import torch
from torch import nn

from ..errors import EngineError
from ..generator import SourceState
from ..motion import Keypoints

if TYPE_CHECKING:
    from ..model import FirstOrderModel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Every precision a backend may offer: the torch dtypes, and int8 (quantized graphs, which have no torch dtype).
PRECISIONS = (*DTYPES, "int8")


class BackendUnavailable(EngineError):
    """The backend cannot run here: a library is missing, the device is wrong, or building it failed."""


class Backend(ABC):
    """name: as given to ``load_model(backend=...)``; precisions: what it offers per device type."""

    name: ClassVar[str]
    precisions: ClassVar[dict[str, tuple[str, ...]]]  # device type ("cpu", "cuda") -> precisions, default first

    def __init__(self, model: "FirstOrderModel", precision: str):
        self.model = model
        self.precision = precision
        # The device that runs the graphs when it is not the model's (an Intel GPU fed from the host), named for the
        # start-up line; None: the model's device.
        self.accelerator: str | None = None
        self.chosen_by_auto = False  # set by select_backend: auto's own reason is logged instead of hints
        self.dtype = DTYPES.get(precision)  # None for int8
        self._source: SourceState | None = None
        self._prepared: object = None

    @classmethod
    def check(cls, device: torch.device, precision: str | None) -> str:
        """The precision to use (the default if None); raises BackendUnavailable for an impossible combination."""
        offered = cls.precisions.get(device.type, ())
        if not offered:
            raise BackendUnavailable(f"backend {cls.name!r} does not run on {device.type}")
        if precision is None:
            return offered[0]
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
        if precision not in offered:
            raise BackendUnavailable(f"backend {cls.name!r} on {device.type} offers {list(offered)}, not {precision!r}")
        return precision

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` (a quick check that builds nothing), or None if it can."""
        if device.type not in cls.precisions:
            return f"runs only on {', '.join(cls.precisions)}"
        return None

    @classmethod
    def auto_precisions(cls, device: torch.device) -> tuple[str | None, ...]:
        """The precisions ``auto`` may pick here, fastest first (None: the backend's default)."""
        return (None,)

    def auto_choice_reason(self) -> str:
        """Why ``auto`` stopped at this backend and precision (logged at start-up)."""
        return "the fastest backend that can run here (see benchmarks/RESULTS.md)"

    def faster_precision_hint(self) -> str:
        """A faster precision this backend offers here, for the start-up line ("" when there is none)."""
        return ""

    @abstractmethod
    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        """Bx3xHxW float32 in [0, 1] -> float32 Keypoints (BxKx2, BxKx2x2)."""

    def render(self, source: SourceState, driving: Keypoints) -> torch.Tensor:
        """A float32 source state + float32 driving keypoints -> Bx3xHxW float32 in [0, 1].

        The source is converted to the backend's form (:meth:`prepare_source`) once, when a new one arrives.
        """
        if source is not self._source:
            self._prepared, self._source = self.prepare_source(source), source
        return self.render_prepared(self._prepared, driving)

    @abstractmethod
    def render_prepared(self, source: object, driving: Keypoints) -> torch.Tensor:
        """:meth:`render` from a source already in the backend's form."""

    def prepare_source(self, source: SourceState) -> object:
        """Convert a float32 source state, once per avatar, into what :meth:`render_prepared` takes."""
        return source


def cast_source(source: SourceState, dtype: torch.dtype) -> SourceState:
    """The source state for networks running in ``dtype``: the maps the convolutions read (features, heatmaps)
    in ``dtype``; what is only sampled or used as coordinates (image, keypoints) stays float32."""
    return SourceState(features=source.features.to(dtype),
                       motion=source.motion._replace(heatmaps=source.motion.heatmaps.to(dtype)))


def weights_fingerprint(model: "FirstOrderModel") -> str:
    """sha256 of every parameter and buffer (after fusing): compiled artifacts are only reused for these weights."""
    return state_dicts_digest(model.networks)


def state_dicts_digest(networks: Iterable[nn.Module], as_float32: bool = False) -> str:
    """sha256 hex of the networks' parameters and buffers, in order: each entry's name, then its bytes (C order, as
    stored, or every entry converted to float32 first when ``as_float32``, so that the dtype it was loaded in does
    not count).  Fingerprints are compared across machines and key caches: the bytes hashed must never change."""
    digest = hashlib.sha256()
    for network in networks:
        for name, tensor in network.state_dict().items():
            digest.update(name.encode())
            tensor = tensor.detach().float() if as_float32 else tensor.detach()
            digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()

"""Inference backends for the per-frame computation, one file each behind :class:`base.Backend`.

    eager        PyTorch as is: float32 anywhere; float16 / bfloat16 on CUDA
    compile      torch.compile (Inductor); CUDA graphs on CUDA
    onnxruntime  ONNX (opset 17) run by ONNX Runtime: TensorRT, CUDA or CPU provider
    tensorrt     torch-tensorrt (dynamo path), float16, static shapes; CUDA only
    openvino     OpenVINO on the CPU: float32, bfloat16 (where the CPU has it), int8 (quality-gated)
    openvino-gpu OpenVINO on an Intel GPU (tensors stay on the host: --device cpu)

``auto`` tries them fastest first and falls back, saying why, when one cannot
run (see AUTO_ORDER).  Backend modules are imported only when chosen, so a missing optional
library costs nothing until it is asked for.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Callable

from ..errors import EngineError
from .base import PRECISIONS, Backend, BackendUnavailable
from .eviction import cache_limit_bytes

if TYPE_CHECKING:
    from ..model import FirstOrderModel

BACKENDS = {  # name -> (module, class)
    "eager": ("eager", "EagerBackend"),
    "compile": ("compiled", "CompileBackend"),
    "onnxruntime": ("onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("tensorrt", "TensorRTBackend"),
    "openvino": ("openvino", "OpenVinoBackend"),
    "openvino-gpu": ("openvino", "OpenVinoGpuBackend"),
}
AUTO_ORDER = {  # fastest first (benchmarks/RESULTS.md)
    "cuda": ("tensorrt", "compile", "onnxruntime", "eager"),
    # On the CPU, torch.compile takes minutes to build for about 10% over eager: auto leaves it out.  OpenVINO
    # offers auto its bfloat16 (where native) then float32 (Backend.auto_precisions).
    "cpu": ("openvino", "onnxruntime", "eager"),
}

__all__ = ["AUTO_ORDER", "BACKENDS", "PRECISIONS", "Backend", "BackendUnavailable", "backend_class", "select_backend"]


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise EngineError(f"unknown backend {name!r}; expected 'auto' or one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def select_backend(model: "FirstOrderModel", name: str = "auto", precision: str | None = None,
                   log: Callable[[str], None] = logging.getLogger(__name__).warning) -> Backend:
    """Build backend ``name`` for ``model`` (``auto``: the fastest that works here, each failure logged).

    Raises :class:`BackendUnavailable` when the named backend (or, for auto, every backend) cannot run,
    and :class:`EngineError` for an unknown name or precision.
    """
    cache_limit = cache_limit_bytes()  # a bad setting said before anything is built, not taken for a failed build
    if name != "auto":
        return _kept_under_limit(_build(backend_class(name), model, precision), cache_limit)
    reasons = []
    for candidate in AUTO_ORDER.get(model.device.type, ("eager",)):
        backend = backend_class(candidate)
        for choice in (precision,) if precision else _auto_precisions(backend, model):
            variant = candidate if choice is None else f"{candidate} {choice}"
            try:
                chosen = _build(backend, model, choice)
            except BackendUnavailable as error:
                reasons.append(f"{variant}: {error}")
                log(f"backend {variant} cannot run here ({error}); trying the next")
                continue
            chosen.chosen_by_auto = True
            logger = logging.getLogger(__name__)
            if precision:  # the precision was the user's choice, only the backend auto's
                logger.info("auto chose backend %s %s: the first backend in auto's order (fastest first) that runs "
                            "%s here, the precision asked for", candidate, chosen.precision, precision)
            elif logger.isEnabledFor(logging.INFO):  # the reason may time the model (OpenVINO's int8 offer)
                logger.info("auto chose backend %s %s: %s", candidate, chosen.precision, chosen.auto_choice_reason())
            return _kept_under_limit(chosen, cache_limit)
    raise BackendUnavailable("no backend can run here: " + "; ".join(reasons))


def _auto_precisions(backend: type[Backend], model: "FirstOrderModel") -> tuple[str | None, ...]:
    """The precisions auto tries for ``backend``, fastest first.  A keypoints-only model (a remote client's) keeps
    float32 where the backend has it: its keypoints are all the server renders from, bfloat16 moved them by up to
    2.4 pixels of the crop on the test faces, and the detector alone is cheap in float32 (about 20 ms on 2 cores)."""
    choices = backend.auto_precisions(model.device)
    if not model.renders and "float32" in choices:
        return ("float32",)
    return choices


def _kept_under_limit(backend: Backend, cache_limit: int) -> Backend:
    """``backend``, once the artifact cache is back under ``cache_limit`` bytes (the graphs it uses stay)."""
    from .artifacts import keep_under_limit

    keep_under_limit(cache_limit)
    return backend


def _build(backend: type[Backend], model: "FirstOrderModel", precision: str | None) -> Backend:
    """Check the combination, then the quick reasons it cannot run here (each with its fix), then build it."""
    precision = backend.check(model.device, precision)
    reason = backend.unavailable_reason(model.device)
    if reason:
        raise BackendUnavailable(reason)
    return backend(model, precision)

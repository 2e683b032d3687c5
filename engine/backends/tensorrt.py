"""TensorRT through torch-tensorrt's dynamo path: float16, static shapes (batch 1 at the model's frame size).

The keypoint detector and the render step (with flat inputs, see
:class:`engine.export.FlatRender`) are cast to float16 (their coordinate work
stays float32: :func:`graph_to_compile`), exported with ``torch.export`` and
compiled by ``torch_tensorrt.dynamo.compile``, which builds strongly typed
networks: each layer runs in the dtype the graph gives it.  The compiled
programs are saved in the artifact cache (as ``.pt2``, the suffix
``torch.export.save`` requires) and loaded on later starts with
``torch_tensorrt.load`` (which registers the engine-execution op even where
only torch-tensorrt's Python runtime is present); an entry that fails to load
is rebuilt.  Each saved program is checked against the sha256 recorded when
it was built (:mod:`engine.backends.artifacts`) and rebuilt if it changed.
Only failures that will repeat (a conversion error) are remembered as
``<artifact>.failed``; a build that ran out of memory or disk falls back for
this run only.  TensorRT's kernel timing cache lives beside them (torch-tensorrt
would keep it in the system's temporary folder), so rebuilds are quicker and
clearing the cache clears it too.  Inputs stay on the GPU: the engines run on
the current CUDA stream, with no host copy.

``python -m engine.tensorrt_ops`` checks, without TensorRT, that every op of
these graphs has a torch-tensorrt converter, and that every keyword argument
this module passes to torch-tensorrt is a parameter of the function it calls.
"""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from typing import Callable

import torch

from ..export import FlatKeypoints, FlatRender, example_frame, example_inputs, flatten_source
from ..errors import one_line, squeezed
from ..generator import SourceState
from ..held_signals import held_stop_signals
from ..motion import Keypoints
from ..weights import cache_root
from .artifacts import artifact_key, artifact_path, library_version, load_artifact
from .base import Backend, BackendUnavailable, cast_source

PARTS = ("keypoints", "render")
Graph = tuple[torch.nn.Module, tuple[torch.Tensor, ...]]
# How CUDA, TensorRT and torch-tensorrt word running out of memory ("CUDA out of memory", "OutOfMemory").
_OUT_OF_MEMORY = re.compile(r"out\s*of\s*memory", re.IGNORECASE)


def graph_to_compile(model, part: str) -> Graph:
    """What this backend hands torch-tensorrt for ``part``: (module, example inputs), batch 1 at the frame size
    (:func:`engine.export.example_inputs`).

    "keypoints": a float16 copy of the keypoint detector
    (:class:`engine.export.FlatKeypoints`), input the frame (1x3xHxW float16
    in [0, 1]), outputs the float32 keypoint values and jacobians.  "render": a
    float16 copy of the render step with flat inputs (:class:`engine.export.FlatRender`):
    the source as :func:`~engine.backends.base.cast_source` leaves it (features
    and heatmaps float16, image and keypoints float32), then the driving
    keypoints, float32.  Coordinate work inside stays float32 (see
    :meth:`engine.dense_motion.DenseMotionNetwork.forward`).  The copy is made
    here, only for a part that is compiled; ``model`` is left as it was.
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")
    if part == "keypoints":
        return FlatKeypoints(copy.deepcopy(model.kp_detector).half()), (example_frame(model).half(),)
    _, source, driving = example_inputs(model)
    return (FlatRender(copy.deepcopy(model.render_step).half()),
            (*flatten_source(cast_source(source, torch.float16)), *driving))


def graphs_to_compile(model) -> dict[str, Graph]:
    """Every part's :func:`graph_to_compile` (the op checks read them all; the backend makes only those it builds)."""
    return {part: graph_to_compile(model, part) for part in PARTS}


def export_graph(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` as the compile step runs it: strict, so one graph or an error, never a graph break."""
    with torch.no_grad(), held_stop_signals():
        return torch.export.export(module, inputs, strict=True)


def strong_typing_keywords(compile_function: Callable) -> dict[str, bool]:
    """The keyword that asks ``compile_function`` for strongly typed networks, where it takes one.

    torch-tensorrt 2.10 to 2.12 take ``use_explicit_typing`` (default True):
    it is passed explicitly.  2.13 dropped the parameter (every network is
    strongly typed) and would swallow the keyword unseen in ``**kwargs``, so
    it is not passed there.  ``python -m engine.tensorrt_ops`` checks which
    case a release is.
    """
    try:
        parameters = inspect.signature(compile_function).parameters
    except (TypeError, ValueError):  # no signature to read: pass nothing it might not take
        return {}
    return {"use_explicit_typing": True} if "use_explicit_typing" in parameters else {}


def is_resource_error(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a lack of resources that another start may not meet.

    Host or GPU memory (``MemoryError``, ``torch.cuda.OutOfMemoryError``, an
    error whose message says out of memory) and the file system (``OSError``:
    a full disk, a permission) count; conversion and export errors do not.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (MemoryError, OSError, torch.cuda.OutOfMemoryError)) or _OUT_OF_MEMORY.search(str(error)):
            return True
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return False


class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = {"cuda": ("float16",)}

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        try:
            import torch_tensorrt  # noqa: F401
        except Exception as error:
            return f'torch-tensorrt is not usable ({type(error).__name__}: {error}): pip install -e ".[tensorrt]"'
        return None

    @classmethod
    def artifact_paths(cls, model, precision: str) -> dict[str, Path]:
        """Where each part's compiled program is cached, under a key of all it depends on (see
        :func:`engine.backends.artifacts.artifact_key`)."""
        key = artifact_key(model, precision, torch_tensorrt=library_version("torch-tensorrt"),
                           tensorrt=library_version("tensorrt"))
        return {part: artifact_path(f"tensorrt-{part}", ".pt2", key, part=part) for part in PARTS}

    def __init__(self, model, precision: str):
        super().__init__(model, precision)
        try:
            import torch_tensorrt
        except Exception as error:  # ImportError, or the TensorRT libraries failing to load
            raise BackendUnavailable(f"torch-tensorrt is not usable here ({error}); pip install -e \".[tensorrt]\"") from None
        self.torch_tensorrt = torch_tensorrt
        paths = self.artifact_paths(model, precision)
        self.keypoints_engine = self._engine("keypoints", paths["keypoints"], lambda: graph_to_compile(model, "keypoints"))
        self.render_engine = (self._engine("render", paths["render"], lambda: graph_to_compile(model, "render"))
                              if model.renders else None)

    def _engine(self, part: str, path: Path, graph: Callable[[], Graph]):
        """The compiled ``part``: from the cache at ``path``, else built from ``graph()``, saved there and loaded back.

        ``graph`` is called only for a build.  A failed build that will
        repeat leaves ``<artifact>.failed`` holding the error, so that later
        starts with the same weights, code and library versions fall back at
        once instead of spending minutes failing again; one that lacked
        memory or disk (:func:`is_resource_error`) leaves nothing.
        """
        failure = path.with_suffix(".failed")
        if failure.exists():
            raise BackendUnavailable(f"the TensorRT {part} build failed before with these versions "
                                     f"({squeezed(failure.read_text())}); delete {failure} to try again")
        try:
            return load_artifact(path, lambda temporary: self._build(graph, temporary),
                                 f"building the TensorRT {part} engine (minutes)", self._load)
        except Exception as error:
            if is_resource_error(error):
                raise BackendUnavailable(f"TensorRT build of the {part} graph ran out of resources ({one_line(error)}); "
                                         "falling back for this run only") from error
            failure.parent.mkdir(parents=True, exist_ok=True)
            failure.write_text(f"{type(error).__name__}: {error}"[:2000] + "\n")
            raise BackendUnavailable(f"TensorRT build of the {part} graph failed: {one_line(error)}") from error

    def _build(self, graph: Callable[[], Graph], path: Path) -> None:
        """Compile ``graph()`` in strongly typed networks (each layer in the dtype the graph gives it); save it to path."""
        module, inputs = graph()
        with torch.no_grad():
            compiled = self.torch_tensorrt.dynamo.compile(
                export_graph(module, inputs), arg_inputs=list(inputs), min_block_size=1,
                timing_cache_path=str(cache_root() / "compiled" / "tensorrt-timing-cache.bin"),
                **strong_typing_keywords(self.torch_tensorrt.dynamo.compile))
        self.torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=list(inputs))

    def _load(self, path: Path):
        return self.torch_tensorrt.load(str(path)).module()

    @torch.inference_mode()
    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        return Keypoints(*self.keypoints_engine(frames.half()))

    @torch.inference_mode()
    def render_prepared(self, source: tuple[torch.Tensor, ...], driving: Keypoints) -> torch.Tensor:
        return self.render_engine(*source, *driving).float()

    def prepare_source(self, source: SourceState) -> tuple[torch.Tensor, ...]:
        """The source as the engine's first five inputs (see :func:`graph_to_compile`), made once per avatar."""
        return flatten_source(cast_source(source, torch.float16))

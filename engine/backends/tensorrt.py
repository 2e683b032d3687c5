"""TensorRT through torch-tensorrt's dynamo path: float16, static shapes (batch 1 at the model's frame size).

The keypoint detector and the render step (with flat inputs, see
:class:`engine.export.FlatRender`) are cast to float16 (their coordinate work
stays float32: :func:`graphs_to_compile`), exported with ``torch.export`` and
compiled by ``torch_tensorrt.dynamo.compile``, which builds strongly typed
networks: each layer runs in the dtype the graph gives it.  The compiled
programs are saved in the artifact cache and loaded on later starts with
``torch_tensorrt.load`` (which registers the engine-execution op even where
only torch-tensorrt's Python runtime is present); an entry that fails to load
is rebuilt.  TensorRT's kernel timing cache lives beside them (torch-tensorrt
would keep it in the system's temporary folder), so rebuilds are quicker and
clearing the cache clears it too.  Inputs stay on the GPU: the engines run on
the current CUDA stream, with no host copy.

``python -m engine.tensorrt_ops`` checks, without TensorRT, that every op of
these graphs has a torch-tensorrt converter, and that every keyword argument
this module passes to torch-tensorrt is a parameter of the function it calls.
"""

from __future__ import annotations

import copy
import sys

import torch

from ..export import FlatKeypoints, FlatRender, flatten_source
from ..generator import SourceState
from ..motion import Keypoints
from ..weights import cache_root
from .artifacts import artifact_path, build_atomically, code_fingerprint, device_description, library_version
from .base import Backend, BackendUnavailable, cast_source, weights_fingerprint


def graphs_to_compile(model) -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    """What this backend hands torch-tensorrt: part name -> (module, example inputs), batch 1 at the frame size.

    "keypoints": a float16 copy of the keypoint detector
    (:class:`engine.export.FlatKeypoints`), input the frame (1x3xHxW float16
    in [0, 1]), outputs the float32 keypoint values and jacobians.  "render": a
    float16 copy of the render step with flat inputs (:class:`engine.export.FlatRender`):
    the source as :func:`~engine.backends.base.cast_source` leaves it (features
    and heatmaps float16, image and keypoints float32), then the driving
    keypoints, float32.  Coordinate work inside stays float32 (see
    :meth:`engine.dense_motion.DenseMotionNetwork.forward`).
    """
    height, width = model.frame_size
    frame = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(model.device)
    with torch.no_grad():  # not inference_mode: export wants ordinary tensors as example inputs
        keypoints = model.kp_detector(frame)
        source = model.generator.encode_source(frame, keypoints)
    return {
        "keypoints": (FlatKeypoints(copy.deepcopy(model.kp_detector).half()), (frame.half(),)),
        "render": (FlatRender(copy.deepcopy(model.render_step).half()),
                   (*flatten_source(cast_source(source, torch.float16)), *keypoints)),
    }


def export_graph(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` as the compile step runs it: strict, so one graph or an error, never a graph break."""
    with torch.no_grad():
        return torch.export.export(module, inputs, strict=True)


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

    def __init__(self, model, precision: str):
        super().__init__(model, precision)
        try:
            import torch_tensorrt
        except Exception as error:  # ImportError, or the TensorRT libraries failing to load
            raise BackendUnavailable(f"torch-tensorrt is not usable here ({error}); pip install -e \".[tensorrt]\"") from None
        self.torch_tensorrt = torch_tensorrt
        height, width = model.frame_size
        key = dict(weights=weights_fingerprint(model), code=code_fingerprint(), config=repr(model.config),
                   device=device_description(model.device), precision=precision, shape=f"{height}x{width}",
                   torch=torch.__version__, torch_tensorrt=library_version("torch-tensorrt"),
                   tensorrt=library_version("tensorrt"), align_corners=str(model.generator.align_corners))
        graphs = graphs_to_compile(model)
        self.keypoints_engine = self._engine("keypoints", key, *graphs["keypoints"])
        self.render_engine = self._engine("render", key, *graphs["render"])

    def _engine(self, part: str, key: dict, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
        """The compiled ``part``: from the cache, else built, saved and loaded back.

        A failed build leaves ``<artifact>.failed`` holding the error, so that
        later starts with the same weights, code and library versions fall back
        at once instead of spending minutes failing again.
        """
        path = artifact_path(f"tensorrt-{part}", ".ep", part=part, **key)
        failure = path.with_suffix(".failed")
        if failure.exists():
            raise BackendUnavailable(f"the TensorRT {part} build failed before with these versions "
                                     f"({failure.read_text().strip()}); delete {failure} to try again")
        if path.exists():
            try:
                return self.torch_tensorrt.load(str(path)).module()
            except Exception as error:
                print(f"cached TensorRT engine {path} is unusable ({error}); rebuilding it", file=sys.stderr)
                path.unlink()
        try:
            with torch.no_grad():
                compiled = self.torch_tensorrt.dynamo.compile(
                    export_graph(module, inputs), arg_inputs=list(inputs), min_block_size=1,
                    timing_cache_path=str(cache_root() / "compiled" / "tensorrt-timing-cache.bin"))
            build_atomically(path, lambda temporary: self.torch_tensorrt.save(
                compiled, str(temporary), output_format="exported_program", arg_inputs=list(inputs)))
            return self.torch_tensorrt.load(str(path)).module()
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            path.unlink(missing_ok=True)
            failure.parent.mkdir(parents=True, exist_ok=True)
            failure.write_text(reason[:2000] + "\n")
            raise BackendUnavailable(f"TensorRT build of the {part} graph failed: {reason}") from error

    @torch.inference_mode()
    def detect_keypoints(self, frames: torch.Tensor) -> Keypoints:
        return Keypoints(*self.keypoints_engine(frames.half()))

    @torch.inference_mode()
    def render_prepared(self, source: tuple[torch.Tensor, ...], driving: Keypoints) -> torch.Tensor:
        return self.render_engine(*source, *driving).float()

    def prepare_source(self, source: SourceState) -> tuple[torch.Tensor, ...]:
        """The source as the engine's first five inputs (see :func:`graphs_to_compile`), made once per avatar."""
        return flatten_source(cast_source(source, torch.float16))


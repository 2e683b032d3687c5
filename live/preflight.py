"""Checks of the command line that need no model: made before anything slow is loaded.

A render that would overwrite its own driving video, write into a folder
that is not there, or send its frames nowhere is refused here, in one
message, before the minutes a first start can take.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engine.config import ModelConfig, released_models
from engine.weights import find_checkpoint

OUTPUT_SUFFIX = ".mp4"


class PreflightError(ValueError):
    """The options ask for something that cannot work."""


def model_and_checkpoint(config: str, checkpoint: str | None) -> tuple[ModelConfig, Path]:
    """``--config`` (a released model's name or a YAML file) and the checkpoint to load for it: ``--checkpoint``, else
    that model's released weights where ``--download-weights`` puts them (CheckpointError saying how to get them)."""
    model = ModelConfig.load(config)
    if checkpoint is None and model.name not in released_models():
        raise PreflightError(f"--config {config} is not a released model, so there are no released weights for it: "
                             "pass --checkpoint PATH")
    return model, find_checkpoint(checkpoint, model=model.name)


def check_output_path(output: str, camera: str) -> Path:
    """The ``--output`` path, once it is known to be a writable .mp4 that is not the driving video."""
    path = Path(output).expanduser()
    if path.is_dir():
        raise PreflightError(f"--output {output} is a folder; expected a file name such as {path / 'out.mp4'}")
    if path.suffix.lower() != OUTPUT_SUFFIX:
        raise PreflightError(f"--output {output}: expected a file name ending in {OUTPUT_SUFFIX}, got "
                             f"{path.suffix or 'no extension'}")
    camera_path = Path(camera).expanduser()
    if not camera.isdigit() and camera_path.exists() and _same_file(path, camera_path):
        raise PreflightError(f"--output {output} is the driving video given as --camera: writing it would destroy "
                             "the input. Choose another file name")
    folder = path.parent
    if not folder.is_dir():
        found = "a file" if folder.exists() else "nothing"
        raise PreflightError(f"--output {output}: its folder {folder} does not exist (found {found} there)")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fomm-live-write-test-"):
            pass
    except OSError as error:
        raise PreflightError(f"--output {output}: cannot write in {folder} ({error.strerror or error})") from None
    return path


def check_some_output(preview: bool, output: str | None, virtual_camera: bool, why_no_virtual_camera: str = "") -> None:
    """Refuse a run whose frames would go nowhere: no preview, no file and no virtual camera."""
    if preview or output or virtual_camera:
        return
    reason = f"the virtual camera is unavailable ({why_no_virtual_camera})" if why_no_virtual_camera \
        else "the virtual camera is off"
    raise PreflightError(f"nothing to send the frames to: --no-preview is set, there is no --output, and {reason}. "
                         "Add --output FILE.mp4, drop --no-preview, or pass --virtual-camera")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()

"""The on-disk cache of compiled artifacts (ONNX files, TensorRT engines).

An entry's file name is a hash of everything it depends on: the weights
(their sha256), the architecture, the input shape, the precision, the device
(GPU name and compute capability), the library versions, and the engine's own
source code (a graph traced from older code is never reused).  Any change
gives a new key; a stale entry is never looked up again.  Entries are written
atomically (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..weights import cache_root


def library_version(distribution: str) -> str:
    """The installed version of a distribution, or "none" (it still belongs in a cache key)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


ENGINE_ROOT = Path(__file__).resolve().parent.parent


def code_fingerprint(package: Path = ENGINE_ROOT) -> str:
    """sha256 of the Python sources under ``package`` (default: the engine), names and contents."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} sm{props.major}{props.minor}"
    return "cpu"


def artifact_path(kind: str, suffix: str, **key: str) -> Path:
    """``<cache>/compiled/<kind>-<hash of key>.<suffix>``; key holds every input the artifact depends on."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "compiled" / f"{kind}-{digest}{suffix}"


def build_atomically(path: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(temporary_path)`` and move the result to ``path``; nothing is left behind on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        build(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path

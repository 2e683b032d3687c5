"""The on-disk cache of compiled artifacts (ONNX files, OpenVINO blobs, TensorRT programs), shared by every backend.

An entry's file name is a hash of everything it depends on
(:func:`artifact_key`): the weights (their sha256), the architecture, the
input shape, the precision, the device (GPU name and compute capability),
the library versions, the ``grid_sample`` convention and the engine's own
source code (a graph traced from older code is never reused).  Any change
gives a new key; a stale entry is never looked up again.

An entry is trusted only while its bytes are those it was built with:
:func:`cached_artifact` writes ``<artifact>.sha256`` beside each artifact
(atomically, after the artifact itself) and checks it before every use.  An
entry that fails the check (a flipped byte, a truncated file, a missing
digest) is logged and rebuilt, never loaded.  Every use marks an entry as
recent; once a backend is built, :func:`keep_under_limit` removes the entries
used least recently while the folder is over its size limit (:mod:`.eviction`).
A backend needs two calls::

    key = artifact_key(model, precision, onnxruntime=onnxruntime.__version__)
    path = cached_artifact(artifact_path("onnx-render", ".onnx", key, part="render"), build, "exporting ...")
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

import torch

from ..errors import one_line
from ..weights import cache_root, file_sha256
from ..weights_cache import write_atomically
from .base import BackendUnavailable, weights_fingerprint
from .eviction import ENTRY_NAME, LIMIT_ENV, evict, remove_stale_temporaries, size_text, touch

if TYPE_CHECKING:
    from ..model import FirstOrderModel

log = logging.getLogger(__name__)
DIGEST_SUFFIX = ".sha256"
ENGINE_ROOT = Path(__file__).resolve().parent.parent
Loaded = TypeVar("Loaded")
_USED_HERE: set[str] = set()  # names of the entries this process verified or built: never evicted under it


def library_version(distribution: str) -> str:
    """The installed version of a distribution, or "none" (it still belongs in a cache key)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


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


def artifact_key(model: "FirstOrderModel", precision: str, **versions: str) -> dict[str, str]:
    """Everything a compiled form of ``model`` depends on, as strings.

    weights, code, config, device, precision, shape, torch and align_corners,
    plus ``versions``: the backend's own libraries (e.g. ``onnxruntime="1.32.0"``)
    and anything else that changes its output (e.g. ``opset="17"``).
    """
    height, width = model.frame_size
    return dict(weights=weights_fingerprint(model), code=code_fingerprint(), config=repr(model.config),
                device=device_description(model.device), precision=precision, shape=f"{height}x{width}",
                torch=torch.__version__, align_corners=str(model.generator.align_corners if model.renders else None), **versions)


def artifact_path(kind: str, suffix: str, key: dict[str, str], **extra: str) -> Path:
    """``<cache>/compiled/<kind>-<hash of key and extra>.<suffix>``; key holds every input the artifact depends on."""
    digest = hashlib.sha256(json.dumps({**key, **extra}, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "compiled" / f"{kind}-{digest}{suffix}"


def digest_path(path: Path) -> Path:
    """Where the sha256 of ``path`` is kept: ``<path>.sha256``."""
    return path.with_name(path.name + DIGEST_SUFFIX)


def unverified_reason(path: Path) -> str | None:
    """Why the entry at ``path`` cannot be trusted (absent, no digest, bytes changed), or None when it can."""
    if not path.exists():
        return "absent"
    try:
        recorded = digest_path(path).read_text().strip()
    except FileNotFoundError:
        return f"it has no digest {digest_path(path).name}"
    except (OSError, UnicodeDecodeError) as error:
        return f"its digest is unreadable ({error})"
    try:
        actual = file_sha256(path)
    except OSError as error:
        return f"it is unreadable ({error})"
    if actual != recorded:
        return f"its sha256 {actual[:16]}... differs from the one recorded when it was built ({recorded[:16]}...)"
    return None


def discard(path: Path) -> None:
    """Remove an entry and its digest."""
    path.unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)


def build_atomically(path: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(temporary_path)``, move the result to ``path``, then write its digest beside it.

    The temporary file lies in the same folder and ends in the same suffix as
    ``path`` (some writers, ``torch.export.save`` for one, insist on it).
    Nothing is left behind on failure; an artifact without its digest (a crash
    between the two renames) is rebuilt on the next use.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=f".tmp{path.suffix}",
                                     delete=False) as handle:
        temporary = Path(handle.name)
    try:
        build(temporary)
        digest = file_sha256(temporary)
        digest_path(path).unlink(missing_ok=True)
        os.replace(temporary, path)
        write_atomically(digest_path(path), (digest + "\n").encode())
    finally:
        temporary.unlink(missing_ok=True)
    return path


def cached_artifact(path: Path, build: Callable[[Path], None], action: str) -> Path:
    """``path`` when it holds the bytes it was built with, else (re)built by ``build(temporary_path)``.

    ``action`` says what building does, e.g. "exporting the render graph to
    ONNX"; it is logged (info) before a build, since builds are slow.  An
    entry that exists but fails the digest check is logged (warning),
    removed and rebuilt, never returned.  Exceptions of ``build`` propagate,
    with nothing left at ``path``.
    """
    return _verified_or_built(path, build, action)[0]


def load_artifact(path: Path, build: Callable[[Path], None], action: str, load: Callable[[Path], Loaded]) -> Loaded:
    """``load`` the verified or freshly built artifact (see :func:`cached_artifact`).

    A cached entry that passes the digest check but still fails to load (made
    by an incompatible library, say) is logged, rebuilt and loaded once more.
    :class:`BackendUnavailable` from ``load`` (the providers, not the file)
    propagates at once, as does any failure of a fresh build or its load.
    """
    path, built = _verified_or_built(path, build, action)
    try:
        return load(path)
    except BackendUnavailable:
        raise
    except Exception as error:
        if built:
            raise
        log.warning("cached artifact %s is unusable (%s); rebuilding it", path, one_line(error))
        discard(path)
    return load(cached_artifact(path, build, action))


def _verified_or_built(path: Path, build: Callable[[Path], None], action: str) -> tuple[Path, bool]:
    """(path, whether it was built now)."""
    match = ENTRY_NAME.fullmatch(path.name)
    if match:
        _USED_HERE.add(match["entry"])
    touch(path)  # before the (slow) digest check, so that another process sees it in use at once
    reason = unverified_reason(path)
    if reason is None:
        return path, False
    if reason == "absent":
        log.info("%s (first start only: cached in %s)", action, path.parent)
    else:
        log.warning("cached artifact %s cannot be trusted (%s); rebuilding it", path, reason)
        discard(path)
        log.info("%s (to replace the cached copy)", action)
    return build_atomically(path, build), True


def keep_under_limit(limit: int) -> None:
    """Remove the temporaries builds stopped over a day ago left, then the cache's entries used least recently while
    they total over ``limit`` bytes (:func:`.eviction.cache_limit_bytes`), none this process has used (called once a
    backend is built, so that no graph of it is removed between its parts)."""
    folder = cache_root() / "compiled"
    stale = remove_stale_temporaries(folder, time.time())
    if stale:
        log.info("removed %d temporary %s of builds stopped over a day ago (killed or crashed): %s", len(stale),
                 "file" if len(stale) == 1 else "files", ", ".join(path.name for path in stale))
    removed = evict(folder, limit, keep=_USED_HERE)
    if removed:
        log.info("the compiled-model cache is over its limit of %s (%s): removed %d %s used least recently (%s): %s",
                 size_text(limit), LIMIT_ENV, len(removed), "entry" if len(removed) == 1 else "entries",
                 size_text(sum(entry.size for entry in removed)), ", ".join(entry.name for entry in removed))

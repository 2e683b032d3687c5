"""A safetensors copy of each original checkpoint, made on its first load, verified on every later one.

Unpickling a 228 MB ``.pth.tar`` is slow and, pickles being what they are,
only safe because of ``weights_only=True``.  After the first successful
(strict) load, the ``generator`` and ``kp_detector`` state dicts are written
to ``<cache>/safetensors/<sha256 of the checkpoint>-<config fingerprint>.safetensors``;
later starts read that instead: no pickle involved.  An entry exists only for
a (checkpoint, config) pair that loaded strictly.

Every entry carries, in its safetensors metadata, the sha256 of its tensors
(names, dtypes, shapes and bytes) computed when it was written.  An entry that
does not match it (a flipped byte, a tensor missing or added), that cannot be
parsed (truncated), or that another format version wrote, is logged, removed
and rebuilt from the checkpoint: the checkpoint is never blamed for its copy.

The cache is an optimisation, never a requirement: when its directory cannot
be written (read-only, full, a path under a regular file) or the checkpoint
cannot be read for hashing, the checkpoint loads directly and one warning
says that the cache is off and why.

Hashing 228 MB on every start would cost more than it saves, so the sha256 of
each checkpoint is remembered in ``<cache>/checkpoint-hashes.json`` (see
:func:`file_signature` for what the remembered hash is keyed on).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .checkpoint import split_networks
from .config import ModelConfig
from .errors import CheckpointError
from .weights import file_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = "2"  # 2: entries carry the sha256 of their tensors; entries of format 1 are rebuilt
INDEX_NAME = "checkpoint-hashes.json"
SAMPLE_BYTES = 1 << 16
_SHA256 = re.compile(r"[0-9a-f]{64}")

StateDicts = dict[str, dict[str, torch.Tensor]]


class BadEntry(Exception):
    """A cache entry that must not be used; the message says why."""


class WeightsCache:
    """The safetensors copies under ``directory`` (usually ``cache_root()``).

    :meth:`read` and :meth:`write` never raise for a problem of the cache
    itself: they log it and behave as if there were no cache.  After the
    first such problem the object stays off (``off_reason`` says why), so one
    load logs one warning.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.off_reason: str | None = None

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_NAME

    def entry_path(self, checkpoint: Path, config: ModelConfig, digest: str | None = None) -> Path:
        """Where the copy of ``checkpoint`` (sha256 ``digest``, computed if not given) for ``config`` lives.

        Raises OSError when the checkpoint has to be hashed and cannot be read.
        """
        digest = digest or self.checkpoint_sha256(checkpoint)
        return self.directory / "safetensors" / f"{digest[:32]}-{config_fingerprint(config)}.safetensors"

    def read(self, checkpoint: Path, config: ModelConfig) -> StateDicts | None:
        """The verified cached state dicts of ``checkpoint`` for ``config``, or None.

        None when there is no entry yet, when the entry failed its check (it is
        then removed, to be rebuilt), or when the cache is off.
        """
        digest = self._locate(checkpoint)
        if digest is None:
            return None
        entry = self.entry_path(checkpoint, config, digest)
        if not entry.is_file():
            return None
        try:
            return read_entry(entry, digest)
        except BadEntry as problem:
            self.discard(entry, str(problem))
            return None

    def write(self, checkpoint: Path, config: ModelConfig, state_dicts: StateDicts) -> Path | None:
        """Store the state dicts that were just loaded strictly; returns the entry, or None if the cache is off.

        Atomic: the entry appears whole or not at all, and a failed write leaves no temporary file.
        """
        digest = self._locate(checkpoint)
        if digest is None:
            return None
        entry = self.entry_path(checkpoint, config, digest)
        log.info("making a safetensors copy of the weights (first start only): %s", entry)
        tensors = {f"{network}.{key}": tensor.contiguous()
                   for network, state_dict in state_dicts.items() for key, tensor in state_dict.items()}
        metadata = {
            "format": FORMAT_VERSION,
            "config": config.name,
            "architecture": config_fingerprint(config),
            "source": str(checkpoint),
            "checkpoint_sha256": digest,
            "tensors_sha256": tensors_sha256(tensors),
        }
        try:
            write_atomically(entry, save(tensors, metadata=metadata))
        except OSError as error:
            self._turn_off(f"cannot write {entry}: {_reason(error)}")
            return None
        return entry

    def discard(self, entry: Path, why: str) -> None:
        """Remove an entry that must not be used (it is rebuilt by the next successful load)."""
        log.warning("weights cache entry %s is not usable (%s); rebuilding it from the checkpoint", entry, why)
        try:
            entry.unlink(missing_ok=True)
        except OSError as error:
            self._turn_off(f"cannot remove the bad entry {entry}: {_reason(error)}")

    def checkpoint_sha256(self, checkpoint: Path) -> str:
        """sha256 of the file's bytes, remembered in the index under its resolved path and :func:`file_signature`.

        Raises OSError when the checkpoint cannot be read.  An index that
        cannot be written turns the cache off (the digest is still returned).
        """
        checkpoint = Path(checkpoint).resolve()
        signature = file_signature(checkpoint)
        index = self._read_index()
        remembered = index.get(str(checkpoint))
        if remembered is not None and remembered["signature"] == signature:
            return remembered["sha256"]
        log.info("computing the sha256 of %s (once per file)", checkpoint)
        digest = file_sha256(checkpoint)
        index[str(checkpoint)] = {"signature": signature, "sha256": digest}
        try:
            write_atomically(self.index_path, json.dumps(index, indent=1).encode())
        except OSError as error:
            self._turn_off(f"cannot write {self.index_path}: {_reason(error)}")
        return digest

    def _locate(self, checkpoint: Path) -> str | None:
        """The checkpoint's sha256, or None when the cache is off (or turns off now: checkpoint unreadable, index unwritable)."""
        if self.off_reason is not None or not Path(checkpoint).is_file():
            return None
        try:
            digest = self.checkpoint_sha256(checkpoint)
        except OSError as error:
            self._turn_off(f"cannot read {checkpoint} to compute its sha256: {_reason(error)}")
            return None
        return None if self.off_reason is not None else digest

    def _read_index(self) -> dict[str, dict[str, str]]:
        """The remembered hashes; anything unexpected in the file counts as not remembered."""
        try:
            document = json.loads(self.index_path.read_text())
        except (OSError, ValueError) as error:  # missing, unreadable, not JSON, not UTF-8 (UnicodeDecodeError)
            if not isinstance(error, FileNotFoundError) and self.index_path.is_file():
                log.warning("ignoring %s: %s", self.index_path, _reason(error))
            return {}
        if not isinstance(document, dict):
            log.warning("ignoring %s: expected a JSON object of remembered hashes, found %s",
                        self.index_path, type(document).__name__)
            return {}
        return {path: value for path, value in document.items() if _is_index_record(value)}

    def _turn_off(self, reason: str) -> None:
        if self.off_reason is None:
            self.off_reason = reason
            log.warning("weights cache off: %s; loading the checkpoint directly", reason)


def _is_index_record(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("signature"), str)
            and isinstance(value.get("sha256"), str) and _SHA256.fullmatch(value["sha256"]) is not None)


def read_entry(entry: Path, checkpoint_sha256: str) -> StateDicts:
    """The state dicts of a cache entry made from the checkpoint with ``checkpoint_sha256``.

    Raises :class:`BadEntry` when the file cannot be parsed, was written by
    another format version or from another checkpoint, or when its tensors do
    not hash to the sha256 written with them.
    """
    try:
        with safe_open(str(entry), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise BadEntry(f"unreadable: {error}") from None
    if metadata.get("format") != FORMAT_VERSION:
        raise BadEntry(f"written in format {metadata.get('format')!r}, this version reads format {FORMAT_VERSION!r}")
    if metadata.get("checkpoint_sha256") != checkpoint_sha256:
        raise BadEntry("it was made from another checkpoint")
    if tensors_sha256(tensors) != metadata.get("tensors_sha256"):
        raise BadEntry("its tensors do not match the sha256 written when it was made: "
                       "a changed byte, or a tensor missing or added")
    try:
        return split_networks(tensors, "the entry")
    except CheckpointError as error:
        raise BadEntry(str(error)) from None


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: each one's name, dtype and shape, then its bytes.

    tensors: CPU tensors of any dtype; their bytes are read in place (a
    contiguous tensor is not copied).  Any change of a value, dtype, shape or
    name, and any tensor missing or added, changes the digest.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def file_signature(path: Path) -> str:
    """What the remembered sha256 of a checkpoint is keyed on: metadata that changes with its content.

    Size and modification time alone miss a file rewritten in place with the
    same size whose mtime is then restored (``os.utime``, ``touch -r``, a
    backup tool).  The signature therefore also holds the inode number and
    the status-change time ``st_ctime_ns``, which the kernel sets on every
    write, rename or utime call and which no user call can set back, and the
    sha256 of three 64 KiB samples (start, middle, end) for filesystems where
    ctime is unreliable (some network and FUSE mounts; on Windows st_ctime is
    the creation time).  Cost: one stat and three small reads, against about
    0.5 s to hash 228 MB.
    """
    stat = path.stat()
    samples = hashlib.sha256()
    with open(path, "rb") as stream:
        for offset in sorted({0, max(0, stat.st_size // 2 - SAMPLE_BYTES // 2), max(0, stat.st_size - SAMPLE_BYTES)}):
            stream.seek(offset)
            samples.update(stream.read(SAMPLE_BYTES))
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}:{samples.hexdigest()[:16]}"


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename; ``mode``: the file's
    permissions (default: the temporary file's, 0600), set before it appears under ``path``.

    Raises OSError (the directory cannot be made or written, the disk is
    full, the file too large); no temporary file is left behind.  No fsync: a
    torn entry fails its sha256 check and is rebuilt.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    temporary = Path(handle.name)
    try:
        with handle:
            handle.write(data)
        if mode is not None:
            os.chmod(temporary, mode)  # on Windows only the read-only flag exists
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def config_fingerprint(config: ModelConfig) -> str:
    """12 hex digits that change with any architecture number (not with the config's file name)."""
    architecture = dataclasses.asdict(config)
    architecture.pop("name")
    return hashlib.sha256(json.dumps(architecture, sort_keys=True).encode()).hexdigest()[:12]


def _reason(error: Exception) -> str:
    """The operating system's words for an OSError (e.g. "No space left on device"), else the error's text."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__

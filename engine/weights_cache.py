"""A safetensors copy of each original checkpoint, made on its first load.

Unpickling a 228 MB ``.pth.tar`` is slow and, pickles being what they are,
only safe because of ``weights_only=True``.  After the first successful
(strict) load, the ``generator`` and ``kp_detector`` state dicts are written
to ``<cache>/safetensors/<sha256 of the checkpoint>-<config fingerprint>.safetensors``;
later starts read that instead: faster, and no pickle involved.  An entry
exists only for a (checkpoint, config) pair that loaded strictly.  A corrupt
or stale entry is rebuilt from the checkpoint, never trusted.

Hashing 228 MB on every start would cost more than it saves, so the sha256 of
each checkpoint is remembered in ``<cache>/checkpoint-hashes.json`` under its
path, size and modification time, and recomputed only when one of those changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoint import read_safetensors
from .config import ModelConfig
from .errors import CheckpointError

FORMAT_VERSION = "1"


class WeightsCache:
    """The safetensors copies under ``directory`` (usually ``cache_root()``)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def entry_path(self, checkpoint: Path, config: ModelConfig) -> Path:
        digest = self.checkpoint_sha256(checkpoint)
        return self.directory / "safetensors" / f"{digest[:32]}-{config_fingerprint(config)}.safetensors"

    def read(self, checkpoint: Path, config: ModelConfig) -> dict[str, dict[str, torch.Tensor]] | None:
        """The cached state dicts of ``checkpoint`` for ``config``, or None if there is no valid entry."""
        if not Path(checkpoint).is_file():
            return None
        entry = self.entry_path(checkpoint, config)
        if not entry.is_file():
            return None
        try:
            return read_safetensors(entry)
        except CheckpointError as error:
            print(f"weights cache entry {entry} is unreadable ({error}); rebuilding it", file=sys.stderr)
            entry.unlink(missing_ok=True)
            return None

    def write(self, checkpoint: Path, config: ModelConfig, state_dicts: dict[str, dict[str, torch.Tensor]]) -> Path:
        """Store the state dicts that were just loaded strictly; returns the entry's path.  Atomic."""
        entry = self.entry_path(checkpoint, config)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{network}.{key}": tensor.contiguous()
                   for network, state_dict in state_dicts.items() for key, tensor in state_dict.items()}
        metadata = {"format": FORMAT_VERSION, "config": config.name, "source": str(checkpoint)}
        with tempfile.NamedTemporaryFile(dir=entry.parent, suffix=".tmp", delete=False) as handle:
            temporary = Path(handle.name)
        try:
            save_file(tensors, str(temporary), metadata=metadata)
            os.replace(temporary, entry)
        finally:
            temporary.unlink(missing_ok=True)
        return entry

    def checkpoint_sha256(self, checkpoint: Path) -> str:
        """sha256 of the file, remembered under its resolved path, size and mtime."""
        checkpoint = Path(checkpoint).resolve()
        stat = checkpoint.stat()
        signature = f"{stat.st_size}:{stat.st_mtime_ns}"
        index_path = self.directory / "checkpoint-hashes.json"
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        remembered = index.get(str(checkpoint), {})
        if remembered.get("signature") == signature:
            return remembered["sha256"]
        digest = hashlib.sha256()
        with open(checkpoint, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        index[str(checkpoint)] = {"signature": signature, "sha256": digest.hexdigest()}
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.directory, suffix=".tmp", delete=False) as handle:
            json.dump(index, handle, indent=1)
        os.replace(handle.name, index_path)
        return digest.hexdigest()


def config_fingerprint(config: ModelConfig) -> str:
    """12 hex digits that change with any architecture number (not with the config's file name)."""
    architecture = dataclasses.asdict(config)
    architecture.pop("name")
    return hashlib.sha256(json.dumps(architecture, sort_keys=True).encode()).hexdigest()[:12]

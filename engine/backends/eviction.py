"""Keeps the cache of compiled artifacts under a size limit by removing the entries used least recently.

Every entry's name is a hash of what it depends on (:mod:`.artifacts`), so an
upgrade of the tool, of a backend library or of the weights leaves the old
entries behind, never to be read again: without a limit the folder only grows
(one vox-adv-256 variant is 50 to 240 MB; a day of development here left
5.2 GB).  An entry is the artifact and its companions, every file named
``<kind>-<24 hex digits>.<suffix>...`` (the ``.sha256`` digest, an int8
``.quality.json`` report); its last use is the newest modification time among
them, and :func:`touch` marks a use.  Markers are never removed: a TensorRT
``.failed`` record or the ``.quality.json`` report of a refused int8 model (whose
blob is gone) is a few bytes that spare the next start minutes of building.  An
entry that holds anything else (an artifact, with or without its digest) is
removed whole, except its ``.failed`` marker; an accepted int8 model's report
goes with its blob.  Files with other names (TensorRT's timing cache, ONNX
Runtime's engine folder) are neither counted nor removed, except temporaries
(``.<name>.tmp...``) a day old: no build takes that long, so they are what a
killed or crashed build left (a half-written int8 blob is 50 MB).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import EngineError

LIMIT_ENV = "FOMM_LIVE_CACHE_GB"
DEFAULT_LIMIT_GB = 4.0
ENTRY_NAME = re.compile(r"(?P<entry>[a-z0-9]+(?:-[a-z0-9]+)*-[0-9a-f]{24})\..+")
TEMPORARY_NAME = re.compile(r"\..+\.tmp(?:\.[A-Za-z0-9]+)?")  # artifacts.build_atomically's, write_atomically's
STALE_TEMPORARY_S = 24 * 3600
FAILURE_MARKER = ".failed"
MARKERS = (FAILURE_MARKER, ".quality.json")


@dataclass
class Entry:
    """name: ``<kind>-<hash>``; files: the artifact and its companions; size in bytes; last_used: a POSIX time."""

    name: str
    files: list[Path]
    size: int
    last_used: float

    @property
    def holds_artifact(self) -> bool:
        """Whether the entry holds more than markers and digests (see the module's docstring)."""
        return any(not path.name.endswith((*MARKERS, ".sha256")) for path in self.files)

    @property
    def removable_files(self) -> list[Path]:
        """What eviction deletes: every file but a ``.failed`` marker."""
        return [path for path in self.files if not path.name.endswith(FAILURE_MARKER)]


def cache_limit_bytes() -> int:
    """The limit: ``$FOMM_LIVE_CACHE_GB`` gigabytes (GiB, a positive number), else 4; EngineError for another value."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return int(DEFAULT_LIMIT_GB * 2**30)
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = float("nan")
    if not gigabytes > 0 or gigabytes == float("inf"):
        raise EngineError(f"{LIMIT_ENV} must be a positive number of gigabytes for the compiled-model cache, "
                          f"e.g. {DEFAULT_LIMIT_GB:g}; found {text!r}")
    return int(gigabytes * 2**30)


def size_text(size: int) -> str:
    """``size`` bytes for a person: "4 GiB", "0.5 MiB", "1000 GiB", "1 byte" (three significant digits, or whole
    units from 100 up)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    return f"{size} byte" if size == 1 else f"{size} bytes"


def touch(path: Path) -> None:
    """Mark ``path`` as used now (nothing happens where the cache is read-only)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _regular_files(folder: Path, name: re.Pattern) -> Iterator[tuple[Path, re.Match, os.stat_result]]:
    """The regular files of ``folder`` whose whole name matches ``name``, with the match and their status; none
    where the folder cannot be listed (missing, under a regular file, no permission), and not those that vanish
    meanwhile."""
    try:
        paths = list(folder.iterdir())
    except OSError:
        return
    for path in paths:
        match = name.fullmatch(path.name)
        if match is None:
            continue
        try:
            status = path.stat()
        except OSError:
            continue
        if stat.S_ISREG(status.st_mode):
            yield path, match, status


def entries(folder: Path) -> list[Entry]:
    """The cache entries in ``folder``, least recently used first (files that vanish meanwhile are skipped)."""
    found: dict[str, Entry] = {}
    for path, match, status in _regular_files(folder, ENTRY_NAME):
        entry = found.setdefault(match["entry"], Entry(match["entry"], [], 0, 0.0))
        entry.files.append(path)
        entry.size += status.st_size
        entry.last_used = max(entry.last_used, status.st_mtime)
    return sorted(found.values(), key=lambda entry: entry.last_used)


def evict(folder: Path, limit: int, keep: set[str]) -> list[Entry]:
    """Remove the least recently used entries of ``folder`` until the entries total at most ``limit`` bytes.

    keep: entry names never removed (those this process uses).  Returns the
    removed entries, oldest first.  Markers are counted but never removed (see
    the module's docstring).  A file another process
    removed first is no error; one that cannot be removed (permissions) is skipped.
    """
    current = entries(folder)
    total = sum(entry.size for entry in current)
    removed = []
    for entry in current:
        if total <= limit:
            break
        if entry.name in keep or not entry.holds_artifact:
            continue
        freed = 0
        try:
            for path in entry.removable_files:
                try:
                    size = path.stat().st_size
                except FileNotFoundError:  # another process removed it first
                    continue
                path.unlink(missing_ok=True)
                freed += size
        except OSError:  # not ours to remove (permissions): the next entry, then
            continue
        total -= freed
        removed.append(entry)
    return removed


def remove_stale_temporaries(folder: Path, now: float) -> list[Path]:
    """Remove the temporaries in ``folder`` last written over a day before ``now`` (a POSIX time); returns them.

    One that vanishes meanwhile (its build finished) or cannot be removed is skipped.
    """
    removed = []
    for path, _, status in _regular_files(folder, TEMPORARY_NAME):
        if now - status.st_mtime > STALE_TEMPORARY_S:
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    return removed

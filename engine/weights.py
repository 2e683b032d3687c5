"""Where the weights live, and fetching them: resumable, verified, placed atomically.

The released ``vox-adv-cpk.pth.tar`` (228 MB) is published on several mirrors.
:func:`download_weights` tries them in turn, resumes a cut transfer with an
HTTP range request, checks the md5 and only then renames the finished file
into place, so a half-written or unverified file is never at the destination
(it grows beside it as ``<name>.part`` and is never loaded from there).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from .errors import CheckpointError

DEFAULT_MODEL = "vox-adv-256"  # the released model live tools use; its config is configs/vox-adv-256.yaml
DEFAULT_CHECKPOINT_NAME = "vox-adv-cpk.pth.tar"
DEFAULT_CHECKPOINT_MD5 = "8a45a24037871c045fbb8a6a8aa95ebc"
DEFAULT_WEIGHTS_URLS = (
    "https://openavatarify.s3-avatarify.com/weights/vox-adv-cpk.pth.tar",
    "https://openavatarify.s3.amazonaws.com/weights/vox-adv-cpk.pth.tar",
    "https://drive.usercontent.google.com/download?id=1coUCdyRXDbpWnEkA99NLNY60mb9dQ_n3&export=download&confirm=t",
)
CHUNK_BYTES = 1 << 20
PROGRESS_BYTES = 64 << 10  # a transfer that receives less than this in stall_timeout_s seconds has stalled
_MD5 = re.compile(r"[0-9a-fA-F]{32}")

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """The tool's own data directory: ``$FOMM_LIVE_HOME``, else ``$XDG_CACHE_HOME/fomm-live`` (~/.cache/fomm-live)."""
    explicit = os.environ.get("FOMM_LIVE_HOME")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fomm-live"


def released_checkpoint_name(model: str) -> str:
    """File name of a released model's checkpoint, as the original release names it: vox-adv-256 -> vox-adv-cpk.pth.tar."""
    return f"{model.removesuffix('-256')}-cpk.pth.tar"


def default_checkpoint_path(model: str = DEFAULT_MODEL) -> Path:
    """Where ``--download-weights`` puts the checkpoint of ``model`` and the tool looks for it first."""
    return cache_root() / "weights" / released_checkpoint_name(model)


def checkpoint_search_paths(model: str = DEFAULT_MODEL) -> list[Path]:
    """Where the tool looks when no checkpoint is given: the weights directory, then the working directory."""
    return [default_checkpoint_path(model), Path.cwd() / released_checkpoint_name(model)]


def find_checkpoint(explicit: str | Path | None = None, *, model: str = DEFAULT_MODEL) -> Path:
    """The checkpoint to load: ``explicit`` if given, else the first that exists of :func:`checkpoint_search_paths`.

    Raises :class:`CheckpointError` with one message naming every place looked
    at and how to get the weights of ``model``.
    """
    candidates = [Path(explicit)] if explicit is not None else checkpoint_search_paths(model)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    if explicit is None and model != DEFAULT_MODEL:
        raise CheckpointError(
            f"no checkpoint found for {model} (looked at: {looked}). --download-weights fetches only "
            f"{DEFAULT_CHECKPOINT_NAME}: get {released_checkpoint_name(model)} from the original FOMM release and put "
            f"it at {candidates[0]}, or pass the path of the checkpoint"
        )
    fetch = "python run_live.py --download-weights" + (f" --checkpoint {explicit}" if explicit is not None else "")
    raise CheckpointError(
        f"no checkpoint found (looked at: {looked}). Get the weights ({DEFAULT_CHECKPOINT_NAME}, 228 MB) with: "
        f"{fetch}   or download them yourself from {DEFAULT_WEIGHTS_URLS[0]} and pass --checkpoint PATH"
    )


def file_md5(path: Path) -> str:
    return file_digest(path, "md5")


def file_sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks (``algorithm``: a hashlib name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DownloadError(CheckpointError):
    """The weights could not be downloaded or saved; the message says why (for every mirror tried)."""


def check_md5(md5: str | None) -> str | None:
    """``md5`` in lower case, or None (no verification); raises :class:`DownloadError` unless it is 32 hex digits."""
    if md5 is None:
        return None
    if not isinstance(md5, str) or not _MD5.fullmatch(md5.strip()):
        raise DownloadError(f"expected the md5 of the weights as 32 hexadecimal digits, found {md5!r}")
    return md5.strip().lower()


@dataclass
class _Attempt:
    url: str
    reason: str


def download_weights(
    destination: Path,
    urls: Sequence[str] = DEFAULT_WEIGHTS_URLS,
    md5: str | None = DEFAULT_CHECKPOINT_MD5,
    *,
    retries_per_url: int = 3,
    stall_timeout_s: float = 30.0,
    backoff_s: float = 1.0,
    progress: bool = True,
) -> Path:
    """Fetch the checkpoint to ``destination``; returns it.

    Each URL is tried in turn; within one, a transfer that breaks off is
    resumed from where it stopped (up to ``retries_per_url`` attempts, with
    growing pauses).  A transfer stalls when less than 64 KiB arrived in the
    last ``stall_timeout_s`` seconds (a server trickling a byte now and then
    stalls too); the bytes received are kept.  The finished file must match
    ``md5`` (None: not verified; anything but 32 hex digits is refused); a
    mismatch discards it and moves on to the next URL.  A body whose length
    the server did not announce and whose md5 does not match is taken for a
    cut transfer and resumed first.  On success the verified file is renamed
    onto ``destination``.

    Raises :class:`DownloadError`: at once, before any transfer, for a bad md5
    or a destination that cannot be written (a directory, read-only, under a
    regular file); at once, removing the partial file, when writing fails
    (disk full: not a network problem, so not retried); after every URL has
    failed, listing why each did.  Then nothing is at ``destination``, and
    the partial file ``<destination>.part`` is kept only after network
    failures, so that the next run resumes it.
    """
    md5 = check_md5(md5)
    destination = Path(destination)
    partial = _writable_partial(destination)
    failures: list[_Attempt] = []
    for url in urls:
        for attempt in range(1, retries_per_url + 1):
            try:
                announced = _fetch(url, partial, stall_timeout_s, progress)
                if md5 and not announced and file_md5(partial) != md5:
                    raise _Retryable(f"the server closed the connection after {partial.stat().st_size:,} bytes without "
                                     "having said how many to expect: a short read, the transfer was cut")
            except _Retryable as error:
                more = attempt < retries_per_url
                log.warning("download from %s interrupted (%s); %s", url, error, "resuming" if more else "giving up")
                if more:
                    time.sleep(backoff_s * attempt)
                    continue
                failures.append(_Attempt(url, f"attempt {attempt}: {error}"))
                break
            except _Fatal as error:
                log.warning("download from %s failed: %s", url, error)
                failures.append(_Attempt(url, str(error)))
                break
            except _WriteFailed as error:
                partial.unlink(missing_ok=True)
                raise DownloadError(f"could not save the weights: {error}. This is not a network problem, so it was "
                                    f"not retried; the partial file {partial} was removed. Free some space "
                                    f"({DEFAULT_CHECKPOINT_NAME} is 228 MB) or choose another destination, "
                                    "then try again.") from None
            found = file_md5(partial) if md5 else None
            if md5 and found != md5:
                partial.unlink()
                log.warning("download from %s has md5 %s, expected %s: discarded", url, found, md5)
                failures.append(_Attempt(url, f"wrong checksum: md5 {found}, expected {md5}"))
                break
            _place(partial, destination)
            log.info("saved %s (%s bytes%s)", destination, f"{destination.stat().st_size:,}", ", md5 verified" if md5 else "")
            return destination
    reasons = "; ".join(f"{f.url}: {f.reason}" for f in failures)
    kept = partial.stat().st_size if partial.is_file() else 0
    if not kept:
        partial.unlink(missing_ok=True)
    resume = (f" The {kept:,} bytes received are kept in {partial}: running the download again resumes from there."
              if kept else "")
    raise DownloadError(f"could not download {destination.name} from any mirror ({reasons}). Nothing was saved at "
                        f"{destination}.{resume} Try again later, or pass --weights-url with another mirror.")


class _Retryable(Exception):
    """A transfer broke off: resuming may work."""


class _Fatal(Exception):
    """This URL will not serve the file: go to the next one."""


class _WriteFailed(Exception):
    """The downloaded bytes could not be written here (disk full, file too large, I/O error)."""


def _writable_partial(destination: Path) -> Path:
    """The partial file ``<destination>.part``, checked writable before any transfer; raises DownloadError."""
    if destination.is_dir():
        raise DownloadError(f"cannot save the weights to {destination}: it is a directory. Expected the path of a file, "
                            f"e.g. {destination / DEFAULT_CHECKPOINT_NAME}")
    blocking_file = next((parent for parent in destination.parents if parent.exists() and not parent.is_dir()), None)
    if blocking_file is not None:
        raise DownloadError(f"cannot save the weights to {destination}: {blocking_file} is a file, not a directory")
    partial = destination.with_name(destination.name + ".part")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "ab"):
            pass
    except OSError as error:
        raise DownloadError(f"cannot save the weights to {destination}: {error.strerror or error} "
                            f"({error.filename or partial}). Choose a destination you can write to.") from None
    return partial


def _fetch(url: str, partial: Path, stall_timeout_s: float, progress: bool) -> bool:
    """Download ``url`` into ``partial``, resuming what is already there.

    Returns whether the server announced the body's length (a body that
    ended early despite its announced length raises :class:`_Retryable`).
    """
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fomm-live"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=stall_timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # we already have every byte the server has; the checksum decides
            return True
        if error.code >= 500 or error.code == 429:
            raise _Retryable(f"HTTP {error.code} {error.reason}") from None
        raise _Fatal(f"HTTP {error.code} {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
        raise _Retryable(str(getattr(error, "reason", error))) from None

    with response:
        if response.headers.get_content_type() == "text/html":
            raise _Fatal("the server sent a web page instead of the file (quota exceeded or link moved?)")
        content_range = response.headers.get("Content-Range", "")
        resuming = have and response.status == 206 and content_range.startswith(f"bytes {have}-")
        if not resuming:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        try:
            out = open(partial, "ab" if resuming else "wb", buffering=0)  # unbuffered: a full disk fails the write itself
        except OSError as error:
            raise _WriteFailed(f"cannot open {partial}: {error.strerror or error}") from None
        with out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=partial.name.removesuffix(".part"), disable=not progress, file=sys.stderr,
        ) as bar:
            received = _copy(response, out, have, stall_timeout_s, bar.update)
    if total is not None and received < total:
        raise _Retryable(f"connection closed after {received:,} of {total:,} bytes")
    return total is not None


def _copy(response, out, received: int, stall_timeout_s: float, advanced: Callable[[int], object]) -> int:
    """Copy the body into ``out`` as it arrives; returns the partial file's size in bytes.

    Every byte received is written at once (so a stall keeps it).  Raises
    :class:`_Retryable` when the connection breaks or less than
    ``PROGRESS_BYTES`` arrived in ``stall_timeout_s`` seconds, and
    :class:`_WriteFailed` when a write fails.
    """
    mark_bytes, mark_time = received, time.monotonic()
    while True:
        try:
            chunk = response.read1(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as error:  # socket timeout included: no byte at all for a while
            raise _Retryable(f"connection lost after {received:,} bytes: {error or type(error).__name__}") from None
        if not chunk:
            return received
        _write_all(out, chunk)
        received += len(chunk)
        advanced(len(chunk))
        now = time.monotonic()
        if received - mark_bytes >= PROGRESS_BYTES:
            mark_bytes, mark_time = received, now
        elif now - mark_time > stall_timeout_s:
            raise _Retryable(f"stalled: {received - mark_bytes:,} bytes in the last {now - mark_time:.0f} s "
                             f"(less than {PROGRESS_BYTES // 1024} KiB), after {received:,} bytes in all")


def _write_all(out, chunk: bytes) -> None:
    view = memoryview(chunk)
    try:
        while view:
            view = view[out.write(view):]
    except OSError as error:
        name = errno.errorcode.get(error.errno, "")
        raise _WriteFailed(f"writing {out.name} failed: {error.strerror or error}{f' ({name})' if name else ''}") from None


def _place(partial: Path, destination: Path) -> None:
    """Atomically move the verified file into place (same directory, so os.replace is a rename)."""
    try:
        os.replace(partial, destination)
        directory = os.open(destination.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise DownloadError(f"the weights were downloaded and verified but could not be moved to {destination}: "
                            f"{error.strerror or error}; they are in {partial}") from None

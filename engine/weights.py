"""Where the weights live, and fetching them: resumable, verified, placed atomically.

The released ``vox-adv-cpk.pth.tar`` (228 MB) is published on several mirrors.
:func:`download_weights` tries them in turn, resumes a cut transfer with an
HTTP range request, checks the md5 and only then renames the finished file
into place, so a half-written or unverified file is never at the destination
(it grows beside it as ``<name>.part`` and is never loaded from there).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from .errors import CheckpointError

DEFAULT_CHECKPOINT_NAME = "vox-adv-cpk.pth.tar"
DEFAULT_CHECKPOINT_MD5 = "8a45a24037871c045fbb8a6a8aa95ebc"
DEFAULT_WEIGHTS_URLS = (
    "https://openavatarify.s3-avatarify.com/weights/vox-adv-cpk.pth.tar",
    "https://openavatarify.s3.amazonaws.com/weights/vox-adv-cpk.pth.tar",
    "https://drive.usercontent.google.com/download?id=1coUCdyRXDbpWnEkA99NLNY60mb9dQ_n3&export=download&confirm=t",
)
CHUNK_BYTES = 1 << 20


def cache_root() -> Path:
    """The tool's own data directory: ``$FOMM_LIVE_HOME``, else ``$XDG_CACHE_HOME/fomm-live`` (~/.cache/fomm-live)."""
    explicit = os.environ.get("FOMM_LIVE_HOME")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fomm-live"


def default_checkpoint_path() -> Path:
    """Where ``--download-weights`` puts the checkpoint and the tool looks for it first."""
    return cache_root() / "weights" / DEFAULT_CHECKPOINT_NAME


def checkpoint_search_paths() -> list[Path]:
    """Where the tool looks when no checkpoint is given: the weights directory, then the working directory."""
    return [default_checkpoint_path(), Path.cwd() / DEFAULT_CHECKPOINT_NAME]


def find_checkpoint(explicit: str | Path | None = None) -> Path:
    """The checkpoint to load: ``explicit`` if given, else the first that exists of :func:`checkpoint_search_paths`.

    Raises :class:`CheckpointError` with one message naming every place looked
    at and how to get the weights.
    """
    candidates = [Path(explicit)] if explicit is not None else checkpoint_search_paths()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    fetch = "python run_live.py --download-weights" + (f" --checkpoint {explicit}" if explicit is not None else "")
    raise CheckpointError(
        f"no checkpoint found (looked at: {looked}). Get the weights ({DEFAULT_CHECKPOINT_NAME}, 228 MB) with: "
        f"{fetch}   or download them yourself from {DEFAULT_WEIGHTS_URLS[0]} and pass --checkpoint PATH"
    )


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DownloadError(CheckpointError):
    """Every mirror failed; the message lists why each did."""


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
    timeout_s: float = 30.0,
    backoff_s: float = 1.0,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> Path:
    """Fetch the checkpoint to ``destination``; returns it.

    Each URL is tried in turn; within one, a cut connection is resumed from
    where it stopped (up to ``retries_per_url`` attempts, with growing pauses).
    The finished file must match ``md5`` (skipped when None); a mismatch
    discards it and moves on to the next URL.  On success the verified file is
    renamed onto ``destination``; on failure nothing is there and
    :class:`DownloadError` lists what each URL did.  The partial file
    ``<destination>.part`` is kept after network failures so that the next run
    resumes it.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    failures: list[_Attempt] = []
    for url in urls:
        for attempt in range(1, retries_per_url + 1):
            try:
                _fetch(url, partial, timeout_s, progress)
            except _Retryable as error:
                reason = f"attempt {attempt}: {error}"
                log(f"download from {url} interrupted ({error}); {'retrying' if attempt < retries_per_url else 'giving up'}")
                if attempt < retries_per_url:
                    time.sleep(backoff_s * attempt)
                    continue
                failures.append(_Attempt(url, reason))
                break
            except _Fatal as error:
                log(f"download from {url} failed: {error}")
                failures.append(_Attempt(url, str(error)))
                break
            found = file_md5(partial) if md5 else None
            if md5 and found != md5.lower():
                partial.unlink()
                log(f"download from {url} has md5 {found}, expected {md5}: discarded")
                failures.append(_Attempt(url, f"wrong checksum: md5 {found}, expected {md5}"))
                break
            _place(partial, destination)
            log(f"saved {destination} ({destination.stat().st_size:,} bytes{', md5 verified' if md5 else ''})")
            return destination
    reasons = "; ".join(f"{f.url}: {f.reason}" for f in failures)
    raise DownloadError(f"could not download {destination.name} from any mirror ({reasons}). Nothing was saved at "
                        f"{destination}. Try again later, or pass --weights-url with another mirror.")


class _Retryable(Exception):
    """A transfer broke off: resuming may work."""


class _Fatal(Exception):
    """This URL will not serve the file: go to the next one."""


def _fetch(url: str, partial: Path, timeout_s: float, progress: bool) -> None:
    """Download ``url`` into ``partial``, resuming what is already there."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fomm-live"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # we already have every byte; the checksum decides
            return
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
        with open(partial, "ab" if resuming else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=partial.name.removesuffix(".part"), disable=not progress, file=sys.stderr,
        ) as bar:
            received = have
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise _Retryable(f"connection lost after {received:,} bytes: {error}") from None
            out.flush()
            os.fsync(out.fileno())
        if total is not None and received < total:
            raise _Retryable(f"connection closed after {received:,} of {total:,} bytes")


def _place(partial: Path, destination: Path) -> None:
    """Atomically move the verified file into place (same directory, so os.replace is a rename)."""
    os.replace(partial, destination)
    directory = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

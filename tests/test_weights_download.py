"""Downloading the weights, against a local HTTP server: success, resume, checksum, errors, mirrors."""

from __future__ import annotations

import hashlib
import random
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine import CheckpointError
from engine.weights import DownloadError, check_md5, download_weights, find_checkpoint

from .http_server import FileServer, Route

WEIGHTS = random.Random(1).randbytes(3 * 2**20 + 123)
MD5 = hashlib.md5(WEIGHTS).hexdigest()
REPO = Path(__file__).resolve().parent.parent


def fetch(destination: Path, urls: list[str], md5: str | None = MD5, retries: int = 3, stall_timeout_s: float = 30.0) -> Path:
    return download_weights(destination, urls, md5, retries_per_url=retries, backoff_s=0, progress=False,
                            stall_timeout_s=stall_timeout_s)


def partial_of(destination: Path) -> Path:
    return destination.with_name(destination.name + ".part")


def test_download_succeeds_and_leaves_only_the_verified_file(tmp_path):
    destination = tmp_path / "weights" / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS)}) as server:
        assert fetch(destination, [server.url("/w")]) == destination
    assert destination.read_bytes() == WEIGHTS
    assert sorted(p.name for p in destination.parent.iterdir()) == ["vox.pth.tar"]


def test_cut_connection_is_resumed_with_a_range_request(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS, cut_after=1_000_000, cuts=2)}) as server:
        fetch(destination, [server.url("/w")])
        assert server.requests == [("/w", None), ("/w", "bytes=1000000-"), ("/w", "bytes=2000000-")]
    assert destination.read_bytes() == WEIGHTS


def test_interrupted_download_resumes_in_a_later_run(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    partial_of(destination).write_bytes(WEIGHTS[:500_000])
    with FileServer({"/w": Route(WEIGHTS)}) as server:
        fetch(destination, [server.url("/w")])
        assert server.requests == [("/w", "bytes=500000-")]
    assert destination.read_bytes() == WEIGHTS


def test_server_that_ignores_ranges_restarts_from_zero(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    partial_of(destination).write_bytes(b"stale bytes from another file")
    with FileServer({"/w": Route(WEIGHTS, honours_range=False)}) as server:
        fetch(destination, [server.url("/w")])
    assert destination.read_bytes() == WEIGHTS


def test_wrong_checksum_leaves_nothing(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS)}) as server:
        with pytest.raises(DownloadError, match=f"wrong checksum: md5 {MD5}, expected 0123") as error:
            fetch(destination, [server.url("/w")], md5="0123456789abcdef0123456789abcdef")
    assert "Nothing was saved" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_server_error_is_retried_then_reported(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(status=503)}) as server:
        with pytest.raises(DownloadError, match="attempt 3: HTTP 503"):
            fetch(destination, [server.url("/w")])
        assert len(server.requests) == 3
    assert not destination.exists()


def test_missing_file_is_not_retried(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({}) as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch(destination, [server.url("/gone")])
        assert len(server.requests) == 1
    assert not destination.exists()


def test_mirrors_are_tried_in_turn(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    routes = {"/quota": Route(b"<html>Quota exceeded</html>", content_type="text/html"), "/ok": Route(WEIGHTS)}
    with FileServer(routes) as server:
        fetch(destination, [server.url("/missing"), server.url("/quota"), server.url("/ok")])
        assert [path for path, _ in server.requests] == ["/missing", "/quota", "/ok"]
    assert destination.read_bytes() == WEIGHTS


def test_every_mirror_failing_names_each_reason(tmp_path):
    with FileServer({"/quota": Route(b"<html/>", content_type="text/html")}) as server:
        with pytest.raises(DownloadError) as error:
            fetch(tmp_path / "vox.pth.tar", [server.url("/missing"), server.url("/quota")])
    message = str(error.value)
    assert "/missing: HTTP 404" in message and "/quota: the server sent a web page" in message


def test_half_written_file_is_never_found(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    partial_of(destination).write_bytes(WEIGHTS[:1000])
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        find_checkpoint(destination)


def run_download(*args: str, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_live.py", "--download-weights", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, preexec_fn=preexec_fn)


def test_command_line_download_and_its_failures(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS)}) as server:
        wrong = run_download("--weights-url", server.url("/w"), "--weights-md5", "0" * 32, "--checkpoint", str(destination))
        assert wrong.returncode == 1 and not destination.exists()
        assert "wrong checksum" in wrong.stderr
        ok = run_download("--weights-url", server.url("/w"), "--weights-md5", MD5, "--checkpoint", str(destination))
        assert ok.returncode == 0, ok.stderr
        assert f"saved {destination}" in ok.stderr and "md5 verified" in ok.stderr
        assert destination.read_bytes() == WEIGHTS
        again = run_download("--weights-url", server.url("/w"), "--weights-md5", MD5, "--checkpoint", str(destination))
        assert again.returncode == 0 and len(server.requests) == 2  # already verified: not fetched again


def test_trickling_server_stalls_and_the_bytes_received_are_kept(tmp_path):
    """One byte every 0.1 s never trips a per-read timeout; the no-progress deadline (0.5 s here) does."""
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS, stall_after=1_000_000, trickle_every_s=0.1)}) as server:
        with pytest.raises(DownloadError) as error:
            fetch(destination, [server.url("/w")], retries=1, stall_timeout_s=0.5)
    kept = partial_of(destination).stat().st_size
    assert 1_000_000 < kept < 1_000_100 and partial_of(destination).read_bytes() == WEIGHTS[:kept]
    message = str(error.value)
    assert re.search(rf"stalled: [\d,]+ bytes in the last \d+ s \(less than 64 KiB\), after {kept:,} bytes in all", message)
    assert f"The {kept:,} bytes received are kept in {partial_of(destination)}" in message
    assert not destination.exists()


def test_stalled_transfer_resumes_from_the_bytes_it_kept(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS, stall_after=1_000_000, trickle_every_s=0.1)}) as server:
        fetch(destination, [server.url("/w")], retries=2, stall_timeout_s=0.5)
        [(_, first), (_, second)] = server.requests
    assert first is None and second.startswith("bytes=1000")  # resumed past the trickled bytes, not from 0
    assert int(second[len("bytes="):-1]) > 1_000_000
    assert destination.read_bytes() == WEIGHTS


def test_silent_server_times_out(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS, stall_after=0, trickle_every_s=5.0)}) as server:
        with pytest.raises(DownloadError, match=r"connection lost after 0 bytes: timed out"):
            fetch(destination, [server.url("/w")], retries=1, stall_timeout_s=0.5)
        assert len(server.requests) == 1


def test_body_without_length_cut_short_is_a_short_read_and_is_resumed(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS, send_length=False, cut_after=1_000_000)}) as server:
        fetch(destination, [server.url("/w")])
        assert server.requests == [("/w", None), ("/w", "bytes=1000000-")]
    assert destination.read_bytes() == WEIGHTS


def test_body_without_length_cut_short_is_never_called_a_wrong_checksum(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS, send_length=False, cut_after=1_000_000, honours_range=False, cuts=5)}) as server:
        with pytest.raises(DownloadError) as error:
            fetch(destination, [server.url("/w")], retries=2)
    message = str(error.value)
    assert "closed the connection after 1,000,000 bytes without having said how many to expect: a short read" in message
    assert "checksum" not in message
    assert partial_of(destination).stat().st_size == 1_000_000


def test_complete_body_without_length_and_the_wrong_md5_is_a_wrong_checksum(tmp_path):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS, send_length=False)}) as server:
        with pytest.raises(DownloadError, match=f"wrong checksum: md5 {MD5}, expected 0123"):
            fetch(destination, [server.url("/w")], md5="0123456789abcdef0123456789abcdef")
        # the server says there is nothing past the end (416): the file was whole, so the checksum decides
        assert server.requests == [("/w", None), ("/w", f"bytes={len(WEIGHTS)}-")]
    assert list(tmp_path.iterdir()) == []


def limit_file_size(limit: int):
    """preexec_fn: files may not grow past ``limit`` bytes; a write beyond fails with EFBIG instead of a signal."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_stops_at_once_and_removes_the_partial_file(tmp_path):
    """A 1 MB file size limit (EFBIG, as ENOSPC on a full disk): not a network error, so no retry, no next mirror."""
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS), "/mirror": Route(WEIGHTS)}) as server:
        result = run_download("--weights-url", server.url("/w"), "--weights-url", server.url("/mirror"),
                              "--weights-md5", MD5, "--checkpoint", str(destination), preexec_fn=limit_file_size(2**20))
        assert server.requests == [("/w", None)]
    assert result.returncode == 1
    assert "error: could not save the weights: writing" in result.stderr and "File too large (EFBIG)" in result.stderr
    assert "not a network problem" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("md5", ["", "abc", "z" * 32, "0" * 33, " "], ids=["empty", "short", "not-hex", "long", "blank"])
def test_malformed_md5_is_refused(tmp_path, md5):
    with pytest.raises(DownloadError, match="expected the md5 of the weights as 32 hexadecimal digits"):
        download_weights(tmp_path / "vox.pth.tar", ["http://127.0.0.1:9/never-asked"], md5)
    assert list(tmp_path.iterdir()) == []
    assert check_md5(MD5.upper()) == MD5 and check_md5(None) is None


@pytest.mark.parametrize("md5", ["", "z" * 32], ids=["empty", "not-hex"])
def test_command_line_refuses_an_empty_or_malformed_md5_before_downloading(tmp_path, md5):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS)}) as server:
        result = run_download("--weights-url", server.url("/w"), "--weights-md5", md5, "--checkpoint", str(destination))
        assert server.requests == []
    assert result.returncode == 1
    assert f"error: expected the md5 of the weights as 32 hexadecimal digits, found {md5!r}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def unwritable_destination(kind: str, tmp_path: Path) -> tuple[Path, str]:
    if kind == "directory":
        return tmp_path, f"{tmp_path}: it is a directory. Expected the path of a file, e.g. {tmp_path / 'vox-adv-cpk.pth.tar'}"
    if kind == "under-a-file":
        (tmp_path / "file").write_text("a regular file")
        return tmp_path / "file" / "weights" / "vox.pth.tar", f"{tmp_path / 'file'} is a file, not a directory"
    # read-only: chmod does not stop root; /sys refuses new files to everyone
    destination = Path("/sys/fomm-live-test.pth.tar")
    try:
        open(destination.with_name(destination.name + ".part"), "ab").close()
    except OSError:
        return destination, "Choose a destination you can write to"
    pytest.skip("/sys accepts new files here: no place refuses writes to root on this machine")


@pytest.mark.parametrize("kind", ["directory", "under-a-file", "read-only"])
def test_unwritable_destination_is_one_clear_error(tmp_path, kind):
    destination, expected = unwritable_destination(kind, tmp_path)
    with FileServer({"/w": Route(WEIGHTS)}) as server:
        result = run_download("--weights-url", server.url("/w"), "--checkpoint", str(destination))
        assert server.requests == []
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot save the weights to {destination}") and expected in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

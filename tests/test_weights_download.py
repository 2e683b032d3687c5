"""Downloading the weights, against a local HTTP server: success, resume, checksum, errors, mirrors."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from engine import CheckpointError
from engine.weights import DownloadError, download_weights, find_checkpoint
from live.cli import main

from .http_server import FileServer, Route

WEIGHTS = random.Random(1).randbytes(3 * 2**20 + 123)
MD5 = hashlib.md5(WEIGHTS).hexdigest()
REPO = Path(__file__).resolve().parent.parent


def fetch(destination: Path, urls: list[str], md5: str = MD5, retries: int = 3) -> Path:
    return download_weights(destination, urls, md5, retries_per_url=retries, backoff_s=0, progress=False,
                            log=lambda message: None)


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


def test_command_line_download_and_its_failures(tmp_path, capsys):
    destination = tmp_path / "vox.pth.tar"
    with FileServer({"/w": Route(WEIGHTS)}) as server:
        wrong = main(["--download-weights", "--weights-url", server.url("/w"), "--weights-md5", "0" * 32,
                      "--checkpoint", str(destination)])
        assert wrong == 1 and not destination.exists()
        assert "wrong checksum" in capsys.readouterr().err
        ok = subprocess.run(
            [sys.executable, "run_live.py", "--download-weights", "--weights-url", server.url("/w"),
             "--weights-md5", MD5, "--checkpoint", str(destination)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        assert destination.read_bytes() == WEIGHTS
        again = main(["--download-weights", "--weights-url", server.url("/w"), "--weights-md5", MD5,
                      "--checkpoint", str(destination)])
        assert again == 0 and len(server.requests) == 2  # already verified: not fetched again

"""The render server killed and restarted under a running client; how it starts, stops, refuses to start, and
serves plain ws:// on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from live.remote.client import RemoteError, RemoteRenderer
from live.remote.tls import certificate_fingerprint

from .live_media import REPO, astronaut
from .test_remote_server import SERVER_ARGS, ServerProcess, free_port, motion


def test_client_reconnects_and_frames_flow_again_after_the_server_is_killed_and_restarted(tmp_path):
    home = tmp_path / "home"
    token_file = tmp_path / "token"
    port = free_port()
    first = ServerProcess(home, port, "--token-file", str(token_file)).start()
    assert first.token == token_file.read_text().strip()
    assert first.fingerprint == certificate_fingerprint(home / "server" / "cert.pem")
    client = RemoteRenderer(first.url, first.token, fingerprint=first.fingerprint, known_hosts=tmp_path / "known.json",
                            reconnect_delays=(0.2, 0.5, 1.0))
    client.start(timeout=30)
    client.set_avatar(np.ascontiguousarray(astronaut()))
    stop = threading.Event()
    frames: list = []
    statuses: list[str] = []

    def drive():
        step = 0
        while not stop.is_set():
            step += 1
            client.submit(*motion(step))
            frame = client.latest()
            if frame is not None:
                frames.append(frame)
            statuses.append(client.status)
            time.sleep(0.03)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    second = None
    try:
        _wait(lambda: len(frames) >= 3, 60, "frames from the first server", client)
        # A server that hangs (its sockets open, nothing answered) is noticed by the heartbeat, like a dead one.
        first.process.send_signal(signal.SIGSTOP)
        hung_at = time.monotonic()
        _wait(lambda: not client.connected, 10, "the client noticing a hung server", client)
        assert time.monotonic() - hung_at < 10 and "the connection was lost" in client.disconnect_reason
        first.process.send_signal(signal.SIGCONT)
        resumed_at = len(frames)
        _wait(lambda: len(frames) >= resumed_at + 3, 60, "frames after the server resumed", client)
        assert client.reconnects == 1
        first.process.kill()
        first.process.wait()
        killed_at = len(frames)
        _wait(lambda: not client.connected and "reconnecting to" in client.status, 10, "the client noticing", client)
        time.sleep(1.5)  # a few failed attempts, with growing pauses
        attempts = [int(s.split("(attempt ")[1].split(")")[0]) for s in statuses if "(attempt " in s]
        assert max(attempts) >= 2 and "connection refused" in client.status, client.status
        assert len(frames) - killed_at <= 2  # at most the frames already on their way

        second = ServerProcess(home, port, "--token-file", str(token_file)).start()
        assert (second.token, second.fingerprint) == (first.token, first.fingerprint)  # same cert, same token
        _wait(lambda: len(frames) >= killed_at + 3, 60, "frames from the restarted server", client)
        # The restarted server knew nothing of the avatar: frames mean the client sent it again on its own.
        assert "keypoints before any avatar" not in second.log()
        assert client.connected and client.reconnects == 2 and client.error is None
        sequences = [f.sequence for f in frames]
        assert sequences == sorted(set(sequences))  # never an older frame after a newer one
        # A clean stop: sessions are told the server is going away, the exit status is 0.
        assert second.stop(signal.SIGTERM) == 0, second.log()
        _wait(lambda: not client.connected, 10, "disconnection", client)
        assert client.disconnect_reason == "the server is shutting down", (client.disconnect_reason, second.log())
        assert "stopping: closing 1 session(s)" in second.log()
    finally:
        stop.set()
        driver.join()
        client.close()
        for server in (first, second):
            if server is not None and server.process.poll() is None:
                server.process.kill()


def _wait(condition, timeout: float, what: str, client: RemoteRenderer) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s: {client.status}"
        time.sleep(0.05)


def run_serve(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "FOMM_LIVE_HOME": str(home)}
    return subprocess.run([sys.executable, str(REPO / "run_live.py"), "--serve", *SERVER_ARGS, *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_serve_refuses_unsafe_or_inconsistent_options_before_loading_the_model(tmp_path):
    result = run_serve("--host", "0.0.0.0", home=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "--host 0.0.0.0 is reachable from other machines: pass --token-file PATH" in result.stderr
    assert "loading" not in result.stderr
    result = run_serve("--host", "0.0.0.0", "--token-file", str(tmp_path / "t"), "--no-tls", home=tmp_path)
    assert result.returncode == 1 and "--no-tls serves in the clear: only on a loopback address" in result.stderr
    result = run_serve("--cert", str(tmp_path / "c.pem"), home=tmp_path)
    assert result.returncode == 1 and "--cert and --key go together" in result.stderr
    (tmp_path / "weak").write_text("1234\n")
    result = run_serve("--token-file", str(tmp_path / "weak"), home=tmp_path)
    assert result.returncode == 1 and "at least 16 printable characters" in result.stderr
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    result = run_serve("--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem"), home=tmp_path)
    assert result.returncode == 1 and "cannot use the certificate" in result.stderr and "loading" not in result.stderr
    assert not (tmp_path / "server" / "cert.pem").exists()


def test_plain_websocket_on_loopback_for_a_tls_terminating_proxy(tmp_path):
    server = ServerProcess(tmp_path / "home", free_port(), "--no-tls", "--max-sessions", "1").start()
    try:
        assert server.url == f"ws://127.0.0.1:{server.port}/v1/session" and server.fingerprint is None
        client = RemoteRenderer(server.url, server.token, known_hosts=tmp_path / "known.json")
        client.start(timeout=30)
        try:
            client.set_avatar(np.ascontiguousarray(astronaut()))
            _wait(lambda: client.submit(*motion(1)) and client.latest() is not None, 60, "frame over ws://", client)
            second = RemoteRenderer(server.url, server.token, known_hosts=tmp_path / "known.json")
            try:
                second.start(timeout=30)
            except RemoteError as error:
                assert "the server is full: 1 of 1 sessions in use" in str(error)
            else:
                raise AssertionError("a second session was accepted with --max-sessions 1")
        finally:
            client.close()
        assert not (tmp_path / "known.json").exists()  # no certificate, nothing to remember
        assert not (tmp_path / "home" / "server" / "cert.pem").exists()
    finally:
        assert server.stop() == 0, server.log()

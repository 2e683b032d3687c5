"""The render server as a real process on 127.0.0.1, driven by real clients: frames, refusals, sessions, fuzzing.

One server (the small fixture model, eager, one CPU thread) is shared by the
tests of this module; each test closes its clients, so the session limit (4)
is whole for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
import torch

from engine import load_model
from engine.images import image_to_tensor, tensor_to_image
from engine.motion import Keypoints
from live.remote.client import RemoteError, RemoteRenderer
from live.remote.protocol import (
    AVATAR_HEADER,
    KEYPOINTS_HEADER,
    MAX_AVATAR_BYTES,
    PROTOCOL_VERSION,
    Hello,
    encode_avatar,
    encode_jpeg,
    encode_keypoints,
    encode_text,
    keypoint_detector_fingerprint,
)
from live.remote.tls import KnownServers

from .conftest import SMALL_PARITY_DIR
from .live_media import MODEL_ARGS, REPO, astronaut

SERVER_ARGS = [*MODEL_ARGS, "--device", "cpu"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``run_live.py --serve`` in a subprocess; its output lines collected as they come."""

    def __init__(self, home: Path, port: int, *extra: str):
        self.home, self.port, self.extra = home, port, extra
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> ServerProcess:
        env = {**os.environ, "FOMM_LIVE_HOME": str(self.home), "OMP_NUM_THREADS": "1"}
        self.stdout, self.stderr = [], []
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "run_live.py"), "--serve", *SERVER_ARGS, "--port", str(self.port), *self.extra],
            env=env, cwd=self.home.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            threading.Thread(target=lambda s=stream, l=lines: l.extend(iter(s.readline, "")), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.stdout:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"the server did not start: {self.log()}")
            time.sleep(0.1)
        line = self.stdout[0]
        self.token = re.search(r"FOMM_LIVE_TOKEN=(\S+)", line).group(1)
        self.url = re.search(r"--remote (\S+)", line).group(1)
        found = re.search(r"--fingerprint (\S+)", line)
        self.fingerprint = found.group(1) if found else None
        return self

    def log(self) -> str:
        return "".join(self.stderr)

    def wait_for_log(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr[start:]:
                found = re.search(pattern, line)
                if found:
                    return found
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} within {timeout} s: {self.log()[-3000:]}")

    def stop(self, signal_number: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.process.send_signal(signal_number)
        return self.process.wait(timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("server") / "home"
    running = ServerProcess(home, free_port()).start()
    yield running
    if running.process.poll() is None:
        assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def model():
    return load_model(str(SMALL_PARITY_DIR / "config.yaml"), str(SMALL_PARITY_DIR / "checkpoint.pth.tar"))


@pytest.fixture(scope="module")
def avatar() -> np.ndarray:
    return np.ascontiguousarray(astronaut())


@pytest.fixture
def known_hosts(tmp_path) -> Path:
    return tmp_path / "known_servers.json"


def motion(step: int, count: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Driving keypoints that move a little with ``step``, and near-identity jacobians."""
    rng = np.random.default_rng(step)
    value = (np.linspace(-0.6, 0.6, 2 * count).reshape(count, 2) + 0.05 * np.sin(step / 3)).astype(np.float32)
    jacobian = (np.eye(2) + 0.05 * rng.normal(size=(count, 2, 2))).astype(np.float32)
    return value, jacobian


def connect(server: ServerProcess, known_hosts: Path, model_fingerprint: str, **options) -> RemoteRenderer:
    client = RemoteRenderer(server.url, server.token, known_hosts=known_hosts, model_fingerprint=model_fingerprint,
                            **options)
    client.start(timeout=30)
    return client


def wait_for_frame(client: RemoteRenderer, timeout: float = 60.0, submit_every: float = 0.05):
    """Keep submitting until a frame arrives; returns (frame, {sequence: submitted keypoints})."""
    sent = {}
    deadline = time.monotonic() + timeout
    step = 0
    while time.monotonic() < deadline:
        step += 1
        value, jacobian = motion(step)
        sent[client.submit(value, jacobian)] = (value, jacobian)
        frame = client.latest()
        if frame is not None:
            return frame, sent
        time.sleep(submit_every)
    raise AssertionError(f"no frame within {timeout} s: {client.status}; server says {client.server_message}")


@contextlib.contextmanager
def steadily_driven(client: RemoteRenderer, interval: float):
    """Submit keypoints to ``client`` every ``interval`` seconds from a thread while the block runs; yields the list
    the thread appends each new frame's arrival to (``time.monotonic()``).  The client is closed at the end."""
    frame_times: list[float] = []
    stop = threading.Event()

    def drive():
        step = 0
        while not stop.is_set():
            step += 1
            client.submit(*motion(step))
            if client.latest() is not None:
                frame_times.append(time.monotonic())
            time.sleep(interval)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        yield frame_times
    finally:
        stop.set()
        driver.join()
        client.close()


def local_render(model, avatar: np.ndarray, value: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        state = model.encode_source(image_to_tensor(avatar, model.frame_size, model.device, "avatar"))
        driving = Keypoints(torch.from_numpy(value[None]), torch.from_numpy(jacobian[None]))
        return tensor_to_image(model.render(state, driving), np.uint8)


def through_jpeg(image: np.ndarray) -> np.ndarray:
    """What the server sends for ``image``, decoded as the client decodes it."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(encode_jpeg(image), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ---- frames ---------------------------------------------------------------------------------------------------


def test_frames_match_a_local_render_up_to_jpeg_loss(server, model, avatar, known_hosts):
    assert server.url == f"wss://127.0.0.1:{server.port}/v1/session" and len(server.fingerprint) == 64
    client = connect(server, known_hosts, keypoint_detector_fingerprint(model), fingerprint=server.fingerprint)
    try:
        assert client.connected and client.frame_size == (256, 256)
        client.set_avatar(avatar)
        frame, sent = wait_for_frame(client)
        assert frame.image.shape == (256, 256, 3) and frame.image.dtype == np.uint8
        assert frame.server_ms > 0 and frame.round_trip_ms >= frame.server_ms
        expected = local_render(model, avatar, *sent[frame.sequence])
        difference = np.abs(frame.image.astype(np.int16) - expected)
        assert difference.mean() < 2.0 and np.percentile(difference, 99) < 16, (difference.mean(), difference.max())
        # The small model's frames differ little between poses (about 0.5 to 2 grey levels on average, as much as
        # JPEG's loss), so compare through the same codec: the local render, JPEG-coded here, is the received frame
        # up to a few rounding flips, and another pose is not.
        same = np.abs(frame.image.astype(np.int16) - through_jpeg(expected)).mean()
        other = np.abs(frame.image.astype(np.int16) - through_jpeg(local_render(model, avatar, *motion(10_000)))).mean()
        assert same < 0.05 and other > 0.3, (same, other)
        # A second avatar replaces the first for the frames after it.
        flipped = np.ascontiguousarray(avatar[:, ::-1])
        client.set_avatar(flipped)
        before_switch = max(sent)
        deadline = time.monotonic() + 60
        while (frame := client.latest()) is None or frame.sequence <= before_switch:
            assert time.monotonic() < deadline, client.status
            value, jacobian = motion(7)
            sent[client.submit(value, jacobian)] = (value, jacobian)
            time.sleep(0.05)
        expected = through_jpeg(local_render(model, flipped, *sent[frame.sequence]))
        assert np.abs(frame.image.astype(np.int16) - expected).mean() < 0.05
        assert client.bytes_up < 2 * 1024 * 1024 and client.frames_received >= 2
    finally:
        client.close()
    assert not client.connected and client.status == "closed"


def test_upload_per_frame_is_the_keypoints_only(server, model, avatar, known_hosts):
    client = connect(server, known_hosts, keypoint_detector_fingerprint(model))
    try:
        client.set_avatar(avatar)
        wait_for_frame(client)
        time.sleep(1.0)
        before_up, before_dropped, before_frames = client.bytes_up, client.dropped_up, client.frames_received
        for step in range(40):
            client.submit(*motion(step))
            time.sleep(0.02)
        time.sleep(1.0)
        sent = client.bytes_up - before_up
        assert sent % 252 == 0 and 0 < sent <= 40 * 252  # 252 bytes per keypoints message, nothing else
        assert client.frames_received > before_frames
        # Submitting faster than the server renders (50 per second here) drops the waiting keypoints: each submit
        # was sent or replaced by a newer one, except at most the last, still waiting for room in the window.
        dropped = client.dropped_up - before_dropped
        assert dropped > 0 and 39 <= sent // 252 + dropped <= 40, (sent // 252, dropped)
    finally:
        client.close()


# ---- refusals -------------------------------------------------------------------------------------------------


def test_wrong_token_is_refused_with_a_clear_message(server, known_hosts):
    client = RemoteRenderer(server.url, "not-the-token-at-all", known_hosts=known_hosts)
    with pytest.raises(RemoteError, match=r"the server refused the token \(HTTP 401"):
        client.start(timeout=30)
    assert not client.connected
    server.wait_for_log("refused a connection from 127.0.0.1: wrong or missing token", timeout=10)


def test_other_keypoint_weights_are_refused(server, known_hosts):
    client = RemoteRenderer(server.url, server.token, known_hosts=known_hosts, model_fingerprint="0" * 64)
    with pytest.raises(RemoteError, match="keypoint detector weights .* differ from the server's"):
        client.start(timeout=30)


def test_certificate_is_trusted_on_first_use_and_a_different_one_refused(server, model, known_hosts):
    fingerprint = keypoint_detector_fingerprint(model)
    connect(server, known_hosts, fingerprint).close()
    address = f"127.0.0.1:{server.port}"
    assert KnownServers(known_hosts).get(address) == server.fingerprint
    connect(server, known_hosts, fingerprint).close()  # the remembered one matches
    KnownServers(known_hosts).remember(address, "ab" * 32)
    client = RemoteRenderer(server.url, server.token, known_hosts=known_hosts, model_fingerprint=fingerprint)
    with pytest.raises(RemoteError) as refused:
        client.start(timeout=30)
    message = str(refused.value)
    assert server.fingerprint in message and "ab" * 32 in message
    assert f"--fingerprint {server.fingerprint}" in message and str(known_hosts) in message
    client = RemoteRenderer(server.url, server.token, known_hosts=known_hosts, fingerprint="cd" * 32)
    with pytest.raises(RemoteError, match=f"fingerprint {server.fingerprint}, not {'cd' * 32} .*--fingerprint"):
        client.start(timeout=30)
    # The pinned fingerprint wins over the remembered one.
    connect(server, known_hosts, fingerprint, fingerprint=server.fingerprint.upper()).close()


def test_repeated_wrong_tokens_lock_the_address_out_for_growing_pauses(server):
    """From 127.0.0.2, so that the other tests' address (127.0.0.1) is not locked out."""

    async def attempt(token: str) -> tuple[int, str]:
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), ssl=False)
        async with aiohttp.ClientSession(connector=connector) as http:
            try:
                async with http.ws_connect(server.url, headers={"Authorization": f"Bearer {token}"},
                                           ssl=False) as ws:
                    await ws.send_str(encode_text(Hello(PROTOCOL_VERSION, "")))
                    await ws.receive(timeout=10)
                    return 101, ""
            except aiohttp.WSServerHandshakeError as error:
                return error.status, error.headers.get("Retry-After", "")

    async def scenario():
        results = [await attempt("wrong-token-wrong-token") for _ in range(5)]
        assert [status for status, _ in results] == [401] * 5
        assert await attempt(server.token) == (429, "1")  # locked out, even with the right token
        await asyncio.sleep(1.1)
        assert (await attempt("wrong-token-wrong-token"))[0] == 401
        assert await attempt(server.token) == (429, "2")  # the pause doubled
        await asyncio.sleep(2.1)
        assert (await attempt(server.token))[0] == 101  # served again, and the address is cleared
        assert (await attempt("wrong-token-wrong-token"))[0] == 401

    asyncio.run(scenario())


def test_bad_avatars_are_answered_with_errors_and_the_session_survives(server, model, avatar, known_hosts):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url, headers={"Authorization": f"Bearer {server.token}"},
                                       ssl=False) as ws:
                await ws.send_str(encode_text(Hello(PROTOCOL_VERSION, keypoint_detector_fingerprint(model))))
                assert (await ws.receive_json(timeout=10))["type"] == "welcome"
                bomb = struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0) + bytes(4)
                await ws.send_bytes(AVATAR_HEADER.pack(2, 0, 0, 1) + b"\x89PNG\r\n\x1a\n" + bomb)
                reply = await ws.receive_json(timeout=10)
                assert reply == {"type": "error", "fatal": False, "message":
                                 "message dropped: avatar of 50000x50000 pixels: expected at most 1048576 pixels"}
                await ws.send_bytes(encode_avatar(2, avatar[:128]))
                reply = await ws.receive_json(timeout=10)
                assert "avatar of 256x128: expected the model's frame size, 256x256" in reply["message"]
                await ws.send_bytes(encode_keypoints(1, *motion(1)))
                reply = await ws.receive_json(timeout=30)
                assert reply["message"] == "keypoints before any avatar were dropped: send the avatar first"
                await ws.send_bytes(encode_avatar(3, avatar))
                reply = await ws.receive_json(timeout=60)
                assert reply["type"] == "avatar" and reply["id"] == 3
                await ws.send_bytes(encode_keypoints(2, *motion(2)))
                frame = await ws.receive(timeout=60)
                assert frame.type == aiohttp.WSMsgType.BINARY and struct.unpack_from("<Q", frame.data, 4)[0] == 2
                # A file over the size bound closes the session (the WebSocket's own limit: 1009, message too big).
                await ws.send_bytes(AVATAR_HEADER.pack(2, 0, 0, 4) + bytes(MAX_AVATAR_BYTES + 1))
                closing = await ws.receive(timeout=10)
                assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.MESSAGE_TOO_BIG)

    asyncio.run(scenario())
    server.wait_for_log(rf"session \d+ closed: .*Message size {MAX_AVATAR_BYTES + 9} exceeds limit", timeout=10)


def test_the_server_renders_only_the_newest_of_a_burst(server, model, avatar):
    async def scenario() -> list[int]:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url, headers={"Authorization": f"Bearer {server.token}"},
                                       ssl=False) as ws:
                await ws.send_str(encode_text(Hello(PROTOCOL_VERSION, keypoint_detector_fingerprint(model))))
                session = (await ws.receive_json(timeout=10))["session"]
                await ws.send_bytes(encode_avatar(1, avatar))
                assert (await ws.receive_json(timeout=60))["type"] == "avatar"
                for sequence in range(1, 21):  # far faster than one render
                    await ws.send_bytes(encode_keypoints(sequence, *motion(sequence)))
                rendered = []
                while not rendered or rendered[-1] != 20:
                    frame = await ws.receive(timeout=60)
                    rendered.append(struct.unpack_from("<Q", frame.data, 4)[0])
                return session, rendered

    session, rendered = asyncio.run(scenario())
    assert rendered == sorted(rendered) and len(rendered) <= 4, rendered  # the first one or two, then the newest
    stale = int(server.wait_for_log(rf"session {session} closed: .*; {len(rendered)} frames rendered, (\d+) stale",
                                    timeout=10).group(1))
    assert stale == 20 - len(rendered)


def test_a_session_that_keeps_sending_malformed_messages_is_closed(server, model):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url, headers={"Authorization": f"Bearer {server.token}"},
                                       ssl=False) as ws:
                await ws.send_str(encode_text(Hello(PROTOCOL_VERSION, keypoint_detector_fingerprint(model))))
                await ws.receive_json(timeout=10)
                for i in range(25):
                    await ws.send_bytes(KEYPOINTS_HEADER.pack(1, 0, 10, i + 1) + b"\0" * 7)
                replies = []
                async for message in ws:
                    replies.append(message.json())
                assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
                assert replies[0]["message"] == ("message dropped: keypoints message of 19 bytes: expected 252 "
                                                 "(12 + 24 x 10 keypoints)")
                assert replies[-1]["fatal"] and "20 malformed messages within 10 s" in replies[-1]["message"]
                # Each dropped message was answered (those still queued when the session closed are not sent).
                assert 2 <= len(replies) <= 20 and not any(reply["fatal"] for reply in replies[:-1])

    asyncio.run(scenario())
    server.wait_for_log(r"session \d+ closed: 20 malformed messages within 10 s.* 20 malformed", timeout=10)


# ---- sessions -------------------------------------------------------------------------------------------------


def test_four_clients_get_fair_shares_and_a_fifth_is_refused(server, model, avatar, known_hosts):
    fingerprint = keypoint_detector_fingerprint(model)
    clients = [connect(server, known_hosts, fingerprint) for _ in range(4)]
    stop = threading.Event()

    def drive():
        step = 0
        while not stop.is_set():
            step += 1
            for client in clients:
                client.submit(*motion(step))
                client.latest()
            time.sleep(0.02)

    try:
        for client in clients:
            client.set_avatar(avatar)
        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        fifth = RemoteRenderer(server.url, server.token, known_hosts=known_hosts, model_fingerprint=fingerprint)
        with pytest.raises(RemoteError, match=r"the server is full: 4 of 4 sessions in use \(--max-sessions\)"):
            fifth.start(timeout=30)
        deadline = time.monotonic() + 120
        while min(c.frames_received for c in clients) < 2:
            assert time.monotonic() < deadline, [c.status for c in clients]
            time.sleep(0.1)
        before = [c.frames_received for c in clients]
        while sum(c.frames_received for c in clients) - sum(before) < 60:
            assert time.monotonic() < deadline, [c.frames_received for c in clients]
            time.sleep(0.1)
        shares = [c.frames_received - b for c, b in zip(clients, before)]
        assert min(shares) >= 0.8 * max(shares), shares
    finally:
        stop.set()
        for client in clients:
            client.close()


def test_a_client_that_stops_answering_frees_its_session_within_10_s(server, model, avatar):
    script = (
        "import sys, time, numpy as np\n"
        "from live.remote.client import RemoteRenderer\n"
        "c = RemoteRenderer(sys.argv[1], sys.argv[2], fingerprint=sys.argv[3])\n"
        "c.start(timeout=30)\n"
        "print(c.session, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "FOMM_LIVE_HOME": str(server.home)}
    client = subprocess.Popen([sys.executable, "-c", script, server.url, server.token, server.fingerprint], env=env,
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        session = int(client.stdout.readline())
        server.wait_for_log(rf"session {session} opened", timeout=10)
        mark = len(server.stderr)
        client.send_signal(signal.SIGSTOP)  # the process hangs: its socket stays open, nothing answers the pings
        stopped = time.monotonic()
        found = server.wait_for_log(rf"session {session} closed: (.*?);", timeout=15, start=mark)
        assert time.monotonic() - stopped < 10, found.group(0)
    finally:
        client.kill()
        client.wait()


# ---- fuzzing --------------------------------------------------------------------------------------------------


def _fuzz_messages(rng: random.Random, model_fingerprint: str, avatar: np.ndarray):
    """An endless mix of broken messages, with now and then a valid one."""
    valid_keypoints = encode_keypoints(1, *motion(1))
    valid_avatar = encode_avatar(1, avatar)
    while True:
        choice = rng.randrange(12)
        if choice == 0:
            yield rng.randbytes(rng.randrange(0, 600))
        elif choice == 1:
            yield valid_keypoints[: rng.randrange(len(valid_keypoints))]
        elif choice == 2:  # right size, random content: mostly NaN, huge values or wrong headers
            yield bytes([1, 0, 10, 0]) + rng.randbytes(248)
        elif choice == 3:
            yield valid_avatar[: rng.randrange(len(valid_avatar))]
        elif choice == 4:
            yield bytes([2, 0, 0, 0, 1, 0, 0, 0]) + b"\x89PNG\r\n\x1a\n" + rng.randbytes(rng.randrange(40))
        elif choice == 5:
            yield rng.randbytes(rng.randrange(200)).decode("latin-1")
        elif choice == 6:
            yield encode_text(Hello(PROTOCOL_VERSION, model_fingerprint))[: rng.randrange(60)]
        elif choice == 7:
            yield '{"type": "' + rng.choice(["hello", "welcome", "error", "avatar", "x"]) + '", "a": [' * 50
        elif choice == 8:
            data = bytearray(valid_keypoints)
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            yield bytes(data)
        elif choice == 9:
            yield bytes([rng.randrange(256)])
        elif choice == 10:
            yield b""
        else:
            yield encode_keypoints(rng.randrange(1, 2**63), *motion(rng.randrange(100)))  # valid


async def _raw_fuzzer(server: ServerProcess, rng: random.Random, connections: int) -> None:
    """Below the WebSocket: random bytes instead of TLS, and broken HTTP requests inside TLS."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    upgrade = (f"GET /v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"Authorization: Bearer {server.token}\r\n\r\n").encode()
    for index in range(connections):
        try:
            if index % 2:
                _, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(rng.randbytes(rng.randrange(1, 2000)))
            else:
                _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
                choice = rng.randrange(3)
                if choice == 0:
                    writer.write(upgrade[: rng.randrange(len(upgrade))])  # cut short
                elif choice == 1:
                    writer.write(upgrade + rng.randbytes(rng.randrange(1, 500)))  # garbage where frames go
                else:
                    writer.write(b"GET /" + b"a" * rng.randrange(10, 20000) + b" HTTP/1.1\r\n\r\n")
            await writer.drain()
            writer.close()
        except (OSError, ssl.SSLError):
            pass


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


def test_fuzzing_never_stops_a_well_behaved_session(server, model, avatar, known_hosts):
    fingerprint = keypoint_detector_fingerprint(model)
    good = connect(server, known_hosts, fingerprint)
    good.set_avatar(avatar)
    wait_for_frame(good)
    sent = sessions = refused = 0

    async def fuzzer(seed: int, budget: int, deadline: float):
        nonlocal sent, sessions, refused
        rng = random.Random(seed)
        messages = _fuzz_messages(rng, fingerprint, avatar)
        headers = {"Authorization": f"Bearer {server.token}"}
        async with aiohttp.ClientSession() as http:
            while sent < budget and time.monotonic() < deadline:
                async with http.ws_connect(server.url, headers=headers, ssl=False) as ws:
                    if rng.random() < 0.9:
                        await ws.send_str(encode_text(Hello(PROTOCOL_VERSION, fingerprint)))
                        welcome = await ws.receive(timeout=10)
                        if welcome.type != aiohttp.WSMsgType.TEXT or '"welcome"' not in welcome.data:
                            refused += 1
                            continue
                    sessions += 1
                    reader = asyncio.create_task(_drain(ws))  # answers and the close, as they come
                    for message in messages:
                        if ws.closed or reader.done() or sent >= budget or time.monotonic() > deadline:
                            break
                        try:
                            await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))
                        except ConnectionError:
                            break
                        sent += 1
                        await asyncio.sleep(0.002)
                        if rng.random() < 0.01:
                            break  # now and then the client itself goes away mid-stream
                    await ws.close()
                    await reader

    with steadily_driven(good, 0.03) as frame_times:
        started = time.monotonic()
        deadline = started + 25

        async def fuzz():
            await asyncio.wait_for(asyncio.gather(fuzzer(1, 3000, deadline), fuzzer(2, 3000, deadline),
                                                  _raw_fuzzer(server, random.Random(3), 200)), 60)

        asyncio.run(fuzz())
        fuzzed_until = time.monotonic()
        time.sleep(1.0)
    assert sent >= 2000 and sessions >= 50, (sent, sessions, refused)
    closed_for_garbage = len(re.findall(r"closed: 20 malformed messages within 10 s", server.log()))
    assert closed_for_garbage >= 20, closed_for_garbage
    assert server.process.poll() is None, server.log()[-3000:]
    during = [t for t in frame_times if started <= t <= fuzzed_until]
    gaps = np.diff([started, *during, fuzzed_until])
    assert len(during) >= 5 and gaps.max() < 5.0, (len(during), gaps.max())
    assert good.connected is False and good.error is None  # closed by us, never refused
    assert "Traceback" not in server.log() and "rendering failed" not in server.log()

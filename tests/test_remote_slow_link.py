"""Newest frame wins on a slow link: the render server and the client drop stale frames and keypoints, never queue them.

Loopback absorbs everything, so these tests put a real stalled link between a
client and a real server process: :class:`StalledLink`, a TCP relay whose
downstream (server to client) stops while ``open`` is clear, with a small
receive buffer towards the server, so that TCP back-pressure reaches the
server as it would from a congested network.  TLS passes through it
untouched.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import struct
import threading
import time

import aiohttp
import numpy as np
import pytest

from live.remote.client import RemoteRenderer
from live.remote.protocol import PROTOCOL_VERSION, Hello, encode_avatar, encode_keypoints, encode_text

from .live_media import astronaut
from .test_remote_server import ServerProcess, free_port, motion, steadily_driven

CLOSE_LINE = r"session {} closed: .*?; (\d+) frames rendered, (\d+) stale keypoints and (\d+) unsent frames dropped"


class StalledLink:
    """A TCP relay to 127.0.0.1:``port``: client-to-server bytes pass at once, server-to-client bytes only while
    ``open`` is set.  Its socket towards the server has a small receive buffer, so a stalled downstream fills the
    server's send path within a few kilobytes."""

    def __init__(self, port: int, receive_buffer: int = 4096):
        self.port, self.receive_buffer = port, receive_buffer
        self.open = threading.Event()
        self.open.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, server_url: str) -> str:
        return server_url.replace(f":{self.port}/", f":{self.listener.getsockname()[1]}/")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket()
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)  # before connect: the window
            upstream.connect(("127.0.0.1", self.port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, downstream: bool) -> None:
        try:
            while True:
                if downstream:
                    self.open.wait()
                data = source.recv(4096)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.open.set()
        for end in self.sockets:
            end.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("slow-link") / "home"
    running = ServerProcess(home, free_port()).start()
    yield running
    if running.process.poll() is None:
        assert running.stop() == 0, running.log()


@pytest.fixture
def link(server):
    relay = StalledLink(server.port)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def avatar() -> np.ndarray:
    return np.ascontiguousarray(astronaut())


def frame_sequence(data: bytes) -> int:
    return struct.unpack_from("<Q", data, 4)[0]


async def open_flooding_session(url: str, token: str, avatar: np.ndarray, http: aiohttp.ClientSession):
    """A raw session (the protocol's own messages) with its avatar encoded: (ws, session id)."""
    ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}, ssl=False)
    await ws.send_str(encode_text(Hello(PROTOCOL_VERSION, "")))
    session = (await ws.receive_json(timeout=10))["session"]
    await ws.send_bytes(encode_avatar(1, avatar))
    assert (await ws.receive_json(timeout=60))["type"] == "avatar"
    return ws, session


class Flood:
    """Sends keypoints every 5 ms, far faster than the server renders; ``sent`` is the newest sequence sent."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.sent = ws, 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.sent += 1
            await self.ws.send_bytes(encode_keypoints(self.sent, *motion(self.sent)))
            await asyncio.sleep(0.005)


def test_a_stalled_link_drops_stale_frames_and_never_holds_up_another_session(server, link, avatar, tmp_path):
    # A well-behaved client straight to the server, driven at 30 submits per second the whole time.
    good = RemoteRenderer(server.url, server.token, fingerprint=server.fingerprint, known_hosts=tmp_path / "known.json")
    good.start(timeout=30)
    good.set_avatar(avatar)

    async def slow_session():
        async with aiohttp.ClientSession() as http:
            ws, session = await open_flooding_session(link.url(server.url), server.token, avatar, http)
            flood = Flood(ws)
            sizes = []
            started = time.monotonic()
            while time.monotonic() - started < 1.0 or len(sizes) < 3:  # the link is open: frames flow
                message = await ws.receive(timeout=30)
                assert message.type == aiohttp.WSMsgType.BINARY, message
                sizes.append(len(message.data))
            # Stall long enough for the server to render many more frames than its connection may hold (64 KiB
            # asserted below), however busy this machine is: 20 frames more at the rate measured, since a busier
            # moment renders fewer (with two test suites on two cores, 10 more once gave 9 dropped, 9 waiting).
            rate = len(sizes) / (time.monotonic() - started)
            stall_s = min(max(4.0, (64 * 1024 / np.mean(sizes) + 20) / rate), 60.0)
            received = len(sizes)
            link.open.clear()  # the link stalls; the client keeps sending keypoints
            stalled_at = time.monotonic()
            await asyncio.sleep(stall_s)
            resumed_from = flood.sent  # the newest keypoints sent while the link was stalled
            resumed_at = time.monotonic()
            link.open.set()
            after: list[tuple[int, int]] = []  # (sequence, bytes) of each frame received after the stall
            while not after or after[-1][0] <= resumed_from:  # until a frame of keypoints sent after it
                message = await ws.receive(timeout=30)
                assert message.type == aiohttp.WSMsgType.BINARY, message
                after.append((frame_sequence(message.data), len(message.data)))
            received += len(after)
            flood.task.cancel()
            await ws.close()
            return session, received, after, (stalled_at, resumed_at)

    with steadily_driven(good, 1 / 30) as good_frames:
        session, received, after, (stalled_at, resumed_at) = asyncio.run(slow_session())
        time.sleep(0.5)
    rendered, stale_keypoints, dropped = map(int, server.wait_for_log(CLOSE_LINE.format(session), timeout=10).groups())

    # The server kept rendering the newest keypoints through the stall and dropped the frames the link could not
    # take: every frame it rendered was received or dropped, but for the few in transit when the client closed.
    assert dropped > 0 and stale_keypoints > 0, (rendered, stale_keypoints, dropped)
    assert received + dropped <= rendered <= received + dropped + 8, (received, dropped, rendered)
    # After the stall, what had waited in the connection came first (kilobytes, a few frames), then frames of the
    # keypoints sent after the stall: not a backlog of every frame rendered while it lasted.
    waited = after[:-1]
    assert sum(size for _, size in waited) <= 64 * 1024, waited
    assert len(waited) < dropped, (len(waited), dropped)
    # Frames leap over the keypoints rendered or replaced meanwhile: newest wins.
    assert after[-1][0] - after[0][0] > 10 * len(after), after
    # The well-behaved session got frames all through the stall, about as many as the stalled one had rendered (the
    # sessions take turns): the stalled one held up neither the render thread nor the event loop.
    during = [t for t in good_frames if stalled_at <= t <= resumed_at]
    gaps = np.diff([stalled_at, *during, resumed_at])
    rendered_in_stall = dropped + len(waited)  # about: those dropped, and those the link took after it
    asked_for = 30 * (resumed_at - stalled_at)  # the good session submits 30 keypoints a second at most
    assert len(during) >= max(4, 0.4 * min(rendered_in_stall, asked_for)), (len(during), rendered_in_stall, asked_for)
    assert gaps.max() < (resumed_at - stalled_at) / 3, (len(during), gaps.max())
    assert "Traceback" not in server.log()


def test_the_client_drops_stale_keypoints_while_the_link_is_stalled_and_resumes_with_the_newest(server, link, avatar,
                                                                                                tmp_path):
    client = RemoteRenderer(link.url(server.url), server.token, fingerprint=server.fingerprint,
                            known_hosts=tmp_path / "known.json")
    client.start(timeout=30)
    try:
        client.set_avatar(avatar)
        deadline = time.monotonic() + 60
        while client.latest() is None:
            assert time.monotonic() < deadline, client.status
            client.submit(*motion(0))
            time.sleep(0.05)
        link.open.clear()  # shorter than the heartbeat's patience: the connection stays up
        dropped_before, up_before = client.dropped_up, client.bytes_up
        for step in range(45):  # 1.5 s at 30 frames per second
            client.submit(*motion(step))
            client.latest()
            time.sleep(1 / 30)
        newest = client.submit(*motion(45))
        # No frames came back, so after the window of keypoints in flight every submit replaced the one waiting.
        assert client.dropped_up - dropped_before >= 40 and client.bytes_up - up_before <= 3 * 252
        link.open.set()
        while (frame := client.latest()) is None or frame.sequence < newest:
            assert time.monotonic() < deadline, client.status
            time.sleep(0.01)
        assert frame.sequence == newest and client.connected and client.reconnects == 0
    finally:
        client.close()


def test_the_server_stops_promptly_with_a_client_whose_link_is_stalled(tmp_path, avatar):
    server = ServerProcess(tmp_path / "home", free_port()).start()
    link = StalledLink(server.port)

    async def stall_then_stop():
        async with aiohttp.ClientSession() as http:
            ws, session = await open_flooding_session(link.url(server.url), server.token, avatar, http)
            flood = Flood(ws)
            await ws.receive(timeout=30)
            link.open.clear()
            await asyncio.sleep(2.0)  # the server's buffers toward this client fill
            flood.task.cancel()  # and the client falls silent (a busy client would keep waking the server's side)
            server.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = await asyncio.to_thread(server.process.wait, 30)
            return code, time.monotonic() - started

    try:
        code, took = asyncio.run(stall_then_stop())
    finally:
        link.close()
        if server.process.poll() is None:
            server.process.kill()
    # The close frame could not get through: the connection was dropped after CLOSE_TIMEOUT_S, not waited on.
    assert code == 0 and took < 10, (code, took, server.log()[-2000:])
    assert re.search(r"session \d+ closed: the server is stopping", server.log()), server.log()[-2000:]

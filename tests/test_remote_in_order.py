"""The offline render's remote stage (``in_order``): every frame waits for its own square, woken when it arrives, and a
server that is lost or stops answering ends in RemoteRenderTimeout instead of a hang.

The server is a stand-in on 127.0.0.1 (plain ws://, no model) that answers each keypoints message with a flat grey
square whose level names the sequence number it was rendered from, so each test decides when and whether it answers.
"""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
import torch
from aiohttp import WSCloseCode, WSMsgType, web

from engine.motion import Keypoints
from live.remote.client import RemoteRenderer
from live.remote.protocol import (
    KIND_KEYPOINTS,
    PROTOCOL_VERSION,
    SESSION_PATH,
    Welcome,
    decode_keypoints,
    encode_frame,
    encode_jpeg,
    encode_text,
    message_kind,
)
from live.stages.remote_render import RESEND_AFTER_S, RemoteRender, RemoteRenderTimeout
from live.status import StatusBoard

from .test_remote_server import free_port

SIZE = (64, 64)  # (height, width) the stand-in welcomes with
NUM_KP = 10
KEYPOINTS = Keypoints(torch.zeros(1, NUM_KP, 2), torch.eye(2).expand(1, NUM_KP, 2, 2).clone())


def grey_level(sequence: int) -> int:
    return 20 * sequence % 250


class StandInServer:
    """Welcomes every client and answers each keypoints message after ``delay_s`` (none while ``silent``);
    ``received`` lists the keypoints' sequence numbers in arrival order; ``stop()`` closes every session and stops
    listening (a server lost for good)."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.silent = False
        self.received: list[int] = []
        self.port = free_port()
        self._sockets: set[web.WebSocketResponse] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stand-in-server", daemon=True)
        self._thread.start()
        self._runner = self._call(self._start())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{SESSION_PATH}"

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get(SESSION_PATH, self._session)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    async def _session(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        await ws.receive()  # hello
        await ws.send_str(encode_text(Welcome(PROTOCOL_VERSION, 1, SIZE, NUM_KP)))
        async for message in ws:
            if message.type != WSMsgType.BINARY or message_kind(message.data) != KIND_KEYPOINTS:
                continue
            sequence = decode_keypoints(message.data, NUM_KP).sequence
            self.received.append(sequence)
            if not self.silent:
                await asyncio.sleep(self.delay_s)
                square = np.full((*SIZE, 3), grey_level(sequence), np.uint8)
                await ws.send_bytes(encode_frame(sequence, 1.0, encode_jpeg(square)))
        self._sockets.discard(ws)
        return ws

    def stop(self) -> None:
        async def close():
            for ws in list(self._sockets):
                await ws.close(code=WSCloseCode.GOING_AWAY)
            await self._runner.cleanup()

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def server():
    running = StandInServer()
    yield running
    if running._thread.is_alive():
        running.stop()


@pytest.fixture
def client(server, tmp_path):
    connected = RemoteRenderer(server.url, "token", known_hosts=tmp_path / "known.json", reconnect_delays=(0.2,))
    connected.start(timeout=10)
    yield connected
    connected.close()


def render_within(stage: RemoteRender, seconds: float) -> np.ndarray | None:
    """stage.render(KEYPOINTS) in another thread: a hang fails the test instead of stalling it."""
    outcome: dict[str, object] = {}

    def render() -> None:
        try:
            outcome["image"] = stage.render(KEYPOINTS)
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    worker = threading.Thread(target=render, daemon=True)  # a daemon: a hung render cannot hold the run at exit
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"the render did not return within {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["image"]


def test_each_frame_gets_its_own_square_and_the_wait_sleeps_until_it_arrives(server, client):
    server.delay_s = 0.3
    calls = []
    latest = client.latest
    client.latest = lambda wait_s=0.0: calls.append(wait_s) or latest(wait_s)
    stage = RemoteRender(client, model=None, status=StatusBoard(io.StringIO()), in_order=True, timeout_s=30)
    for sequence in range(1, 5):
        image = render_within(stage, 60)
        assert image.shape == (*SIZE, 3)
        assert abs(float(image.mean()) - grey_level(sequence)) < 2, f"frame {sequence} got another frame's square"
    assert server.received == [1, 2, 3, 4]
    # Woken by each square (one call per frame, more only if a wait reached the resend): a 2 ms poll made ~150.
    assert len(calls) < 12, calls
    assert all(0 < wait <= RESEND_AFTER_S for wait in calls), calls


def test_a_server_that_stops_answering_gets_the_keypoints_again_then_a_timeout(server, client):
    stage = RemoteRender(client, model=None, status=StatusBoard(io.StringIO()), in_order=True, timeout_s=3)
    assert render_within(stage, 60) is not None
    server.silent = True
    with pytest.raises(RemoteRenderTimeout, match=r"rendered nothing for 3 s \(connected to ws://"):
        render_within(stage, 60)
    # The unanswered keypoints were sent again after RESEND_AFTER_S (2 s), once within the 3 s.
    assert server.received == [1, 2, 3]


def test_a_lost_server_ends_in_a_timeout_that_says_the_client_is_reconnecting(server, client):
    log = io.StringIO()
    stage = RemoteRender(client, model=None, status=StatusBoard(log), in_order=True, timeout_s=3)
    assert render_within(stage, 60) is not None
    server.stop()
    with pytest.raises(RemoteRenderTimeout, match=rf"rendered nothing for 3 s \(reconnecting to {server.url} "):
        render_within(stage, 60)
    assert "render server lost: reconnecting to" in log.getvalue()

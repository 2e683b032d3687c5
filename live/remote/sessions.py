"""The render server's sessions and the one thread that renders for all of them.

Each session holds its own avatar state and at most one pending job of each
kind: the newest avatar and the newest keypoints (an older pending one is
replaced and counted as stale: newest wins).  One render thread owns the
model and serves the sessions that have work round-robin, one job per turn,
so every session gets the same share of the model however fast its client
sends.  Batching would go in :meth:`RenderWorker._run`: take the keypoints of
every ready session at once and render them as one batch (their source
states stacked along the batch dimension), then hand each its frame.

Frames and replies leave through the session's :class:`Outbox` on the
event loop, which holds at most the newest frame (a slow link drops stale
frames instead of queueing them).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.animator import SourceRenderer
from engine.motion import Keypoints

from .protocol import AvatarReady, KeypointsMessage, ServerError, encode_frame, encode_jpeg, encode_text

log = logging.getLogger(__name__)

_session_ids = itertools.count(1)


class Outbox:
    """What a session sends, on the event loop: control messages in order, and the newest frame only."""

    MAX_CONTROL = 16

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.control: deque[str] = deque(maxlen=self.MAX_CONTROL)
        self.frame: bytes | None = None
        self.dropped_frames = 0
        self.ready = asyncio.Event()

    def put_control(self, text: str) -> None:
        """Event loop only."""
        self.control.append(text)
        self.ready.set()

    def put_frame(self, data: bytes) -> None:
        """Event loop only; replaces a frame not yet sent."""
        if self.frame is not None:
            self.dropped_frames += 1
        self.frame = data
        self.ready.set()

    def from_thread(self, method, payload) -> None:
        """Call ``method(payload)`` on the event loop from another thread (a closed loop drops it)."""
        try:
            self.loop.call_soon_threadsafe(method, payload)
        except RuntimeError:
            pass

    async def next_message(self) -> str | bytes:
        """The next message to send: control messages first, then the newest frame."""
        while True:
            if self.control:
                return self.control.popleft()
            if self.frame is not None:
                frame, self.frame = self.frame, None
                return frame
            self.ready.clear()
            await self.ready.wait()


@dataclass
class Session:
    """One client's state on the server.  The fields under ``lock`` are shared with the render thread."""

    address: str
    outbox: Outbox
    id: int = field(default_factory=lambda: next(_session_ids))
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending_avatar: tuple[int, np.ndarray] | None = None  # (avatar id, HxWx3 uint8 RGB)
    pending_keypoints: KeypointsMessage | None = None
    renderer: SourceRenderer | None = None  # the encoded avatar, rendered in each pose; render thread only
    closed: bool = False
    frames_rendered: int = 0
    stale_keypoints: int = 0  # pending keypoints replaced by newer ones before they were rendered
    malformed: int = 0
    told_no_avatar: bool = False

    def has_work(self) -> bool:
        return not self.closed and (self.pending_avatar is not None or self.pending_keypoints is not None)


class RenderWorker:
    """The thread that owns the model: encodes avatars and renders keypoints for every session, round-robin."""

    def __init__(self, model):
        self.model = model
        self._ready: deque[Session] = deque()  # sessions with work, each at most once
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="render", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout=10)

    def set_avatar(self, session: Session, avatar_id: int, image: np.ndarray) -> None:
        """Queue ``image`` (HxWx3 uint8 RGB at the model's frame size, already checked) as the session's avatar."""
        with session.lock:
            session.pending_avatar = (avatar_id, image)
        self._wake(session)

    def render(self, session: Session, keypoints: KeypointsMessage) -> None:
        """Queue keypoints for rendering; they replace any still pending for this session."""
        with session.lock:
            if session.pending_keypoints is not None:
                session.stale_keypoints += 1
            session.pending_keypoints = keypoints
        self._wake(session)

    def remove(self, session: Session) -> None:
        """Forget a closed session: its pending work and its avatar state go."""
        with self._condition:
            with session.lock:
                session.closed = True
                session.pending_avatar = session.pending_keypoints = None
            if session in self._ready:
                self._ready.remove(session)
        # The render thread may still hold the state for a job it is finishing; it drops it after.
        session.renderer = None

    def _wake(self, session: Session) -> None:
        with self._condition:
            if not session.closed and session not in self._ready:
                self._ready.append(session)
                self._condition.notify()

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._condition:
                while not self._ready and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                session = self._ready.popleft()
            try:
                self._one_job(session)
            except Exception as error:  # a bug must not stop the server for every other session
                log.exception("session %d: rendering failed", session.id)
                session.outbox.from_thread(session.outbox.put_control,
                                           encode_text(ServerError(f"the server failed to render: {error}", False)))
            with self._condition:
                if session.has_work() and session not in self._ready:
                    self._ready.append(session)  # back of the line: the others go first

    def _one_job(self, session: Session) -> None:
        """The session's avatar if one is pending, else its newest keypoints."""
        with session.lock:
            avatar, session.pending_avatar = session.pending_avatar, None
            keypoints = None
            if avatar is None:
                keypoints, session.pending_keypoints = session.pending_keypoints, None
        if avatar is not None:
            self._encode_avatar(session, *avatar)
        elif keypoints is not None:
            self._render(session, keypoints)
        if session.closed:
            session.renderer = None

    def _encode_avatar(self, session: Session, avatar_id: int, image: np.ndarray) -> None:
        started = time.perf_counter()
        renderer = SourceRenderer(self.model)
        with torch.inference_mode():
            renderer.set_source(image)
        session.renderer = renderer
        ms = (time.perf_counter() - started) * 1000
        log.debug("session %d: avatar %d encoded in %.1f ms", session.id, avatar_id, ms)
        session.outbox.from_thread(session.outbox.put_control, encode_text(AvatarReady(avatar_id, ms)))

    def _render(self, session: Session, keypoints: KeypointsMessage) -> None:
        if session.renderer is None:
            if not session.told_no_avatar:
                session.told_no_avatar = True
                message = ServerError("keypoints before any avatar were dropped: send the avatar first", False)
                session.outbox.from_thread(session.outbox.put_control, encode_text(message))
            return
        started = time.perf_counter()
        device = self.model.device
        driving = Keypoints(torch.from_numpy(keypoints.value[None]).to(device),
                            torch.from_numpy(keypoints.jacobian[None]).to(device))
        image = session.renderer.render(driving)
        jpeg = encode_jpeg(image)
        server_ms = (time.perf_counter() - started) * 1000  # render, copy back and JPEG: the server's whole share
        session.frames_rendered += 1
        session.outbox.from_thread(session.outbox.put_frame, encode_frame(keypoints.sequence, server_ms, jpeg))

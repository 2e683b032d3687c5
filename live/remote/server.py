"""``run_live.py --serve``: the render server, HTTPS + WebSocket on aiohttp.

One endpoint, ``GET /v1/session``, upgraded to a WebSocket (plain HTTP
upgrade, so any reverse proxy or tunnel that passes WebSockets passes it), the
token in ``Authorization: Bearer``.  Refusals before the upgrade are HTTP
statuses a client can name: 401 (wrong or missing token), 429 (this address
failed too often; ``Retry-After`` says for how long), 400 (not a WebSocket
request).  After the upgrade, the client's ``hello`` is answered with
``welcome`` or a fatal ``error`` (protocol version, model weights, server
full).  ``GET /v1/health`` answers ``ok`` for a proxy's health checks.

The server runs until SIGINT or SIGTERM, closes every session with "going
away" (1001, so clients reconnect) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from .addresses import is_loopback
from .protocol import (
    KIND_AVATAR,
    KIND_KEYPOINTS,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    SESSION_PATH,
    Hello,
    ProtocolError,
    ServerError,
    Welcome,
    decode_avatar,
    decode_avatar_png,
    decode_keypoints,
    decode_text,
    encode_text,
    keypoint_detector_fingerprint,
    message_kind,
)
from .sessions import Outbox, RenderWorker, Session
from .tls import CertificateError, certificate_fingerprint, ensure_certificate, server_ssl_context
from .tokens import TOKEN_ENV, FailureThrottle, TokenError, bearer_matches, load_or_create_token

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  # ping every 2 s; a client silent for about 3 s more is gone (its session freed well within 10 s)
HELLO_TIMEOUT_S = 10.0
MALFORMED_LIMIT = 20  # this many malformed messages within MALFORMED_WINDOW_S close the session
MALFORMED_WINDOW_S = 10.0
CLOSE_MALFORMED = WSCloseCode.POLICY_VIOLATION
KERNEL_UNSENT_BYTES = 16 * 1024  # what a connection's kernel buffer may hold not yet sent (see limit_send_buffers)
CLOSE_TIMEOUT_S = 2.0  # a peer that takes nothing has this long to take a last error and the close frame


class _QuietBadRequests(logging.Filter):
    """aiohttp logs every malformed HTTP request (a scanner, random bytes, a client gone mid-request) with a
    traceback; on a public port that floods the terminal.  Those become one debug line; anything else stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (HttpProcessingError, ConnectionError)):
            log.debug("dropped a bad request: %s", str(error).strip() or type(error).__name__)
            return False
        return True


def limit_send_buffers(transport: asyncio.BaseTransport | None) -> None:
    """Keep a connection's unsent bytes to about one frame, so that on a slow link a send waits instead of queueing.

    By default frames pile up at every layer before a send waits: aiohttp's
    writer (256 KiB, see ``writer_limit``), asyncio's TLS transport (512 KiB)
    and TCP transport (64 KiB), and the kernel's send buffer (grown to
    megabytes): seconds of stale video on a slow link.  Here each asyncio
    layer pauses the one above while it holds anything (high water 1, not 0:
    the TLS transport pauses at ``size >= high``, so 0 would pause it while
    empty, and a send would wait for the peer's next message), and the
    kernel keeps at most KERNEL_UNSENT_BYTES not yet sent (TCP_NOTSENT_LOWAT,
    where the system has it).  The TCP transport under TLS is reached through
    the TLS transport's ``_ssl_protocol`` (the standard library's; another
    event loop's is left as it is).  The next frame then waits in the
    session's Outbox, where a newer one replaces it.
    """
    if transport is None:
        return
    connection = transport.get_extra_info("socket")
    if connection is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
        try:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, KERNEL_UNSENT_BYTES)
        except OSError as error:
            log.debug("TCP_NOTSENT_LOWAT not set: %s", error)
    transport.set_write_buffer_limits(high=1, low=0)
    below_tls = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    if isinstance(below_tls, asyncio.WriteTransport):
        below_tls.set_write_buffer_limits(high=1, low=0)


async def close_within(ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, code: int, reason: bytes,
                       last_words: str | None = None) -> None:
    """Send ``last_words`` (a fatal error) if given, then close ``ws`` with ``code``.

    With the small send buffers of :func:`limit_send_buffers` both wait while
    the peer reads nothing: after CLOSE_TIMEOUT_S the connection is dropped
    instead, so a stalled client never holds a session, or the server's
    shutdown, open.
    """
    async def polite() -> None:
        if last_words is not None:
            await ws.send_str(last_words)
        await ws.close(code=code, message=reason)

    try:
        await asyncio.wait_for(polite(), CLOSE_TIMEOUT_S)
    except asyncio.TimeoutError:
        log.debug("a peer took no close frame within %g s: connection dropped", CLOSE_TIMEOUT_S)
        if transport is not None:
            transport.abort()
    except ConnectionError:
        pass


class ServeError(RuntimeError):
    """The server cannot start as asked (options, certificate, token, port)."""


class RenderServer:
    """The aiohttp application around a loaded model: authentication, sessions, validation."""

    def __init__(self, model, token: str, max_sessions: int, throttle: FailureThrottle | None = None):
        self.model = model
        self.token = token
        self.max_sessions = max_sessions
        self.throttle = throttle or FailureThrottle()
        self.fingerprint = keypoint_detector_fingerprint(model)
        self.frame_size = tuple(model.frame_size)
        self.num_kp = model.config.kp_detector.num_kp
        self.worker = RenderWorker(model)
        self.sessions: dict[int, Session] = {}
        self.sockets: dict[web.WebSocketResponse, asyncio.BaseTransport | None] = {}  # open, with their connection
        self.stopping = False
        self.app = web.Application()
        self.app.router.add_get(SESSION_PATH, self._session)
        self.app.router.add_get("/v1/health", self._health)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _session(self, request: web.Request) -> web.StreamResponse:
        address = request.remote or "unknown"
        wait = self.throttle.retry_after(address)
        if wait > 0:
            seconds = math.ceil(wait)
            return web.Response(status=429, headers={"Retry-After": str(seconds)},
                                text=f"too many failed attempts from {address}: try again in {seconds} s\n")
        if not bearer_matches(request.headers.get("Authorization"), self.token):
            self.throttle.failed(address)
            log.warning("refused a connection from %s: wrong or missing token", address)
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"}, text="wrong or missing token\n")
        self.throttle.succeeded(address)
        # writer_limit=0: every send waits while the connection's buffers are full (see limit_send_buffers).
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_MESSAGE_BYTES, writer_limit=0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text=f"{SESSION_PATH} is a WebSocket endpoint\n")
        try:
            await ws.prepare(request)
        except ConnectionError:  # the client left before the upgrade was answered: nothing to send, nothing to log
            return web.Response()
        limit_send_buffers(request.transport)
        self.sockets[ws] = request.transport
        try:
            session = await self._handshake(ws, address)
            if session is not None:
                await self._serve_session(ws, session)
        finally:
            transport = self.sockets.pop(ws)
            if not ws.closed:
                await close_within(ws, transport, WSCloseCode.OK, b"")
        return ws

    async def _handshake(self, ws: web.WebSocketResponse, address: str) -> Session | None:
        """The client's hello -> a registered session, or None after a fatal error was sent."""
        try:
            message = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:
            return await self._refuse(ws, f"no hello within {HELLO_TIMEOUT_S:g} s")
        if message.type != WSMsgType.TEXT:
            return await self._refuse(ws, "expected a hello message first")
        try:
            hello = decode_text(message.data)
        except ProtocolError as error:
            return await self._refuse(ws, f"expected a hello message first: {error}")
        if not isinstance(hello, Hello):
            return await self._refuse(ws, "expected a hello message first")
        if hello.protocol != PROTOCOL_VERSION:
            return await self._refuse(ws, f"this server speaks protocol {PROTOCOL_VERSION}, the client "
                                          f"{hello.protocol}: run the same version of fomm-live on both")
        if hello.model and hello.model != self.fingerprint:
            return await self._refuse(ws, f"the client's keypoint detector weights (sha256 {hello.model[:16]}...) "
                                          f"differ from the server's ({self.fingerprint[:16]}...): run the client "
                                          "with the same --config and --checkpoint as the server")
        if self.stopping:
            return await self._refuse(ws, "the server is stopping")
        if len(self.sessions) >= self.max_sessions:
            return await self._refuse(ws, f"the server is full: {len(self.sessions)} of {self.max_sessions} "
                                          "sessions in use (--max-sessions); try again later")
        if not hello.model:
            log.warning("a client at %s did not say which weights it detects keypoints with", address)
        session = Session(address=address, outbox=Outbox(asyncio.get_running_loop()))
        self.sessions[session.id] = session
        log.info("session %d opened from %s (%d of %d in use)", session.id, address, len(self.sessions),
                 self.max_sessions)
        await ws.send_str(encode_text(Welcome(PROTOCOL_VERSION, session.id, self.frame_size, self.num_kp)))
        return session

    async def _refuse(self, ws: web.WebSocketResponse, why: str) -> None:
        log.warning("refused a session: %s", why)
        await close_within(ws, self.sockets.get(ws), WSCloseCode.POLICY_VIOLATION, b"refused",
                           encode_text(ServerError(why, fatal=True)))

    async def _serve_session(self, ws: web.WebSocketResponse, session: Session) -> None:
        sender = asyncio.create_task(self._send_loop(ws, session.outbox))
        malformed_times: deque[float] = deque()
        why = "the client closed it"
        try:
            async for message in ws:
                try:
                    self._handle(session, message)
                except ProtocolError as error:
                    session.malformed += 1
                    now = time.monotonic()
                    malformed_times.append(now)
                    while malformed_times and now - malformed_times[0] > MALFORMED_WINDOW_S:
                        malformed_times.popleft()
                    if len(malformed_times) >= MALFORMED_LIMIT:
                        why = f"{MALFORMED_LIMIT} malformed messages within {MALFORMED_WINDOW_S:g} s"
                        await close_within(ws, self.sockets.get(ws), CLOSE_MALFORMED, b"too many malformed messages",
                                           encode_text(ServerError(f"session closed: {why} (last: {error})", True)))
                        break
                    session.outbox.put_control(encode_text(ServerError(f"message dropped: {error}", False)))
            else:
                if self.stopping:
                    why = "the server is stopping"
                elif ws.close_code not in (None, WSCloseCode.OK, WSCloseCode.GOING_AWAY):
                    why = f"closed with code {ws.close_code} ({ws.exception() or 'no heartbeat or bad frame'})"
        finally:
            sender.cancel()
            self.worker.remove(session)
            del self.sessions[session.id]
            log.info("session %d closed: %s; %d frames rendered, %d stale keypoints and %d unsent frames dropped, "
                     "%d malformed messages (%d of %d in use)", session.id, why, session.frames_rendered,
                     session.stale_keypoints, session.outbox.dropped_frames, session.malformed, len(self.sessions),
                     self.max_sessions)

    def _handle(self, session: Session, message) -> None:
        """One message of an open session; raises ProtocolError for anything malformed."""
        if message.type == WSMsgType.TEXT:
            raise ProtocolError("no text messages are expected after hello")
        if message.type != WSMsgType.BINARY:
            raise ProtocolError(f"unexpected WebSocket message type {message.type.name}")
        data = message.data
        kind = message_kind(data)
        if kind == KIND_KEYPOINTS:
            self.worker.render(session, decode_keypoints(data, self.num_kp))
        elif kind == KIND_AVATAR:
            avatar = decode_avatar(data)
            self.worker.set_avatar(session, avatar.avatar_id, decode_avatar_png(avatar.png, self.frame_size))
        else:
            raise ProtocolError(f"unknown binary message kind {kind} (expected {KIND_KEYPOINTS} keypoints or "
                                f"{KIND_AVATAR} avatar)")

    @staticmethod
    async def _send_loop(ws: web.WebSocketResponse, outbox: Outbox) -> None:
        while not ws.closed:
            message = await outbox.next_message()
            try:
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
            except (ConnectionError, RuntimeError):
                return

    async def close_all(self) -> None:
        """Close every session with 1001 (going away): clients reconnect."""
        self.stopping = True
        await asyncio.gather(*(close_within(ws, transport, WSCloseCode.GOING_AWAY, b"server shutting down")
                               for ws, transport in list(self.sockets.items())), return_exceptions=True)


def serve(args: argparse.Namespace) -> int:
    """Run the render server as ``args`` say (run_live.py --serve); returns the exit code.

    Prints one line to paste on the client (its URL, token and the
    certificate's fingerprint), serves until SIGINT / SIGTERM, then closes
    every session and returns 0.  A mistake in the options (a public address
    without --token-file, an unusable certificate, a port in use) returns 1.
    """
    from engine import EngineError, load_model
    from engine.weights import cache_root

    from ..preflight import PreflightError, model_and_checkpoint

    try:
        token, token_file, ssl_context, fingerprint = _prepare(args, cache_root() / "server")
        config, checkpoint = model_and_checkpoint(args.config, args.checkpoint)
        log.info("loading %s from %s (backend %s)", config.name, checkpoint, args.backend)
        model = load_model(config, checkpoint, device=args.device, backend=args.backend, precision=args.precision)
    except (ServeError, EngineError, PreflightError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    log.info("%s", model.describe())
    server = RenderServer(model, token, args.max_sessions)
    logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())
    try:
        return asyncio.run(_run(server, args, ssl_context, token, token_file, fingerprint))
    except ServeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _prepare(args: argparse.Namespace, home: Path):
    """(token, token file, SSL context or None, fingerprint or None), checked before the model loads."""
    loopback = is_loopback(args.host)
    if not loopback and not args.token_file:
        raise ServeError(f"--host {args.host} is reachable from other machines: pass --token-file PATH (made with a "
                         "fresh token if it does not exist) so that only clients with the token can connect")
    if args.no_tls and not loopback:
        raise ServeError(f"--no-tls serves in the clear: only on a loopback address, behind a TLS-terminating proxy "
                         f"on this machine (found --host {args.host})")
    if bool(args.cert) != bool(args.key):
        raise ServeError("--cert and --key go together: pass both, or neither for a self-signed certificate")
    token_file = Path(args.token_file) if args.token_file else home / "token"
    try:
        token, made = load_or_create_token(token_file)
    except TokenError as error:
        raise ServeError(str(error)) from None
    if made:
        log.info("wrote a new token to %s", token_file)
    if args.no_tls:
        return token, token_file, None, None
    try:
        if args.cert:
            cert, key = Path(args.cert), Path(args.key)
        else:
            cert, key, made = ensure_certificate(home)
            if made:
                log.info("made a self-signed certificate in %s", cert)
        return token, token_file, server_ssl_context(cert, key), certificate_fingerprint(cert)
    except (CertificateError, OSError) as error:
        raise ServeError(str(error)) from None


async def _run(server: RenderServer, args, ssl_context, token: str, token_file: Path, fingerprint: str | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signal_number, stop.set)
        except NotImplementedError:  # Windows: a plain handler that wakes the loop
            signal.signal(signal_number, lambda *_: loop.call_soon_threadsafe(stop.set))
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=ssl_context, shutdown_timeout=2.0)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise ServeError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None
    server.worker.start()
    print(client_command(args.host, args.port, token, fingerprint), flush=True)
    log.info("serving on %s:%d, at most %d sessions; Ctrl-C stops", args.host, args.port, args.max_sessions)
    await stop.wait()
    log.info("stopping: closing %d session(s)", len(server.sessions))
    await server.close_all()
    await runner.cleanup()
    server.worker.stop()
    return 0


def client_command(host: str, port: int, token: str, fingerprint: str | None) -> str:
    """The one line to paste on the client."""
    shown = host
    if host in ("0.0.0.0", "::", ""):
        shown = socket.gethostname()
    elif ":" in host:
        shown = f"[{host}]"
    scheme = "ws" if fingerprint is None else "wss"
    line = f"{TOKEN_ENV}={token} python run_live.py --remote {scheme}://{shown}:{port}{SESSION_PATH}"
    if fingerprint is not None:
        line += f" --fingerprint {fingerprint}"
    return line + " --source AVATAR"

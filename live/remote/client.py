"""RemoteRenderer: the live tool's render stage pointed at a render server.

The caller (the live tool's render stage) hands it the avatar once and the
motion-transferred keypoints of every frame, and takes the newest rendered
frame whenever it likes; nothing it calls blocks on the network, except a
``latest`` asked to wait (up to a time it gives) for a frame to arrive.  A
background thread runs its own asyncio loop with one WebSocket to the
server, and:

- keeps at most ``window`` keypoint messages in flight; a newer submit
  replaces the one still waiting to be sent (counted in ``dropped_up``);
- drops frames older than one already delivered, or never picked up before
  a newer one arrived (``dropped_down``);
- reconnects after a lost connection with growing pauses
  (``reconnect_delays``, the last repeated) and sends the avatar again;
- checks the server's certificate before sending the token: pinned to
  ``fingerprint``, else to the one remembered for that host:port in
  ``known_hosts``, else one that verifies against the system's certificate
  authorities (a tunnel or a reverse proxy with a real certificate), else the
  one seen now, remembered (trust on first use).

``bytes_up`` and ``bytes_down`` count WebSocket payloads (keypoints, avatar,
frames and control messages), not the TLS and WebSocket framing (about 30
bytes per message more).
"""

from __future__ import annotations

import asyncio
import http
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from .addresses import is_loopback
from .protocol import (
    FRAME_HEADER,
    MAX_FRAME_BYTES,
    MAX_KEYPOINTS,
    PROTOCOL_VERSION,
    AvatarReady,
    Hello,
    ProtocolError,
    ServerError,
    Welcome,
    decode_frame,
    decode_text,
    encode_avatar,
    encode_keypoints,
    encode_text,
)
from .tls import CertificateError, KnownServers, der_fingerprint, normalise_fingerprint

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
HANDSHAKE_TIMEOUT_S = 10.0
IN_FLIGHT_TIMEOUT_S = 2.0  # a request unanswered this long (the server replaced it with a newer one) stops counting
WINDOW = 2


class RemoteError(RuntimeError):
    """The server cannot be used: wrong token, certificate fingerprint mismatch, refused (full, other weights)."""


class _Transient(Exception):
    """A failure worth retrying (connection refused, lost, a proxy's 502)."""


@dataclass(frozen=True)
class RemoteFrame:
    image: np.ndarray  # HxWx3 uint8 RGB at the model's frame size
    sequence: int  # the sequence number of the keypoints it was rendered from
    round_trip_ms: float  # from submit() of those keypoints to receipt
    server_ms: float  # the server's time for it: render, copy back, JPEG


class RemoteRenderer:
    """Renders on a server: ``start()``, ``set_avatar()``, then per frame ``submit()`` and ``latest()``; ``close()``.

    Thread-safe: submit, set_avatar and latest may be called from any thread; only a ``latest`` given ``wait_s``
    blocks.
    """

    def __init__(self, url: str, token: str, *, fingerprint: str | None = None, known_hosts: Path | None = None,
                 model_fingerprint: str = "", reconnect_delays=(0.5, 1, 2, 4), window: int = WINDOW):
        parts = urlsplit(url)
        if parts.scheme not in ("wss", "ws") or not parts.hostname:
            raise RemoteError(f"expected a server URL like wss://HOST:8765/v1/session, got {url!r}")
        if parts.scheme == "ws" and not is_loopback(parts.hostname):
            raise RemoteError(f"ws:// sends the token and keypoints in the clear: only to this machine (a local "
                              f"TLS-terminating proxy or tunnel), not to {parts.hostname}; use wss://")
        if not reconnect_delays or min(reconnect_delays) <= 0:
            raise ValueError(f"reconnect_delays must be positive seconds, got {reconnect_delays!r}")
        try:
            self._pinned = normalise_fingerprint(fingerprint) if fingerprint else None
        except ValueError as error:
            raise RemoteError(f"--fingerprint: {error}") from None
        self.url = url
        self._token = token
        self._tls = parts.scheme == "wss"
        self._address = f"{parts.hostname}:{parts.port or (443 if self._tls else 80)}"
        self._host, self._port = parts.hostname, parts.port or (443 if self._tls else 80)
        if known_hosts is None:
            from engine.weights import cache_root

            known_hosts = cache_root() / "known_servers.json"
        self._known = KnownServers(known_hosts)
        self._model_fingerprint = model_fingerprint
        self._delays = tuple(float(d) for d in reconnect_delays)
        self._window = window

        self.connected = False
        self.status = "not started"
        self.error: str | None = None  # the last refusal after start (the client keeps retrying)
        self.server_message: str | None = None  # the last non-fatal error the server sent (e.g. a rejected avatar)
        self.frame_size: tuple[int, int] | None = None  # (height, width), from the server's welcome
        self.session: int | None = None
        self.disconnect_reason: str | None = None  # why the last established connection ended
        self.dropped_up = self.dropped_down = 0
        self.bytes_up = self.bytes_down = 0
        self.frames_received = 0
        self.reconnects = 0

        self._lock = threading.Lock()
        self._frame_arrived = threading.Condition(self._lock)  # notified when a frame is left for latest()
        self._sequence = 0
        self._queued: tuple[int, bytes] | None = None  # the newest keypoints message not yet sent
        self._submitted_at: dict[int, float] = {}  # sequence -> perf_counter() at submit (the last 256)
        self._in_flight: dict[int, float] = {}  # sequence -> monotonic() when sent, on this connection
        self._avatar: bytes | None = None
        self._avatar_id = 0
        self._avatar_pending = False  # set_avatar since the avatar was last sent
        self._delivered = 0  # the newest sequence handed out by latest()
        self._latest: RemoteFrame | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._first_result = threading.Event()
        self._first_error: str | None = None
        self._fatal: str | None = None  # a fatal error the server sent on this connection

    # ---- the caller's side ----------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Connect; raises RemoteError if refused (token, certificate, full, other weights) or unreachable in time."""
        if self._thread is not None:
            raise RuntimeError("RemoteRenderer.start() called twice")
        self._deadline = time.monotonic() + timeout
        self._thread = threading.Thread(target=self._thread_main, name="remote-render", daemon=True)
        self._thread.start()
        if not self._first_result.wait(timeout + 1.0) or self._first_error is not None:
            why = self._first_error or f"no answer from {self.url} within {timeout:g} s ({self.status})"
            self.close()
            raise RemoteError(why)

    def set_avatar(self, image: np.ndarray) -> None:
        """HxWx3 uint8 RGB at the model's frame size: sent now, and again after every reconnect."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"avatar: expected an HxWx3 uint8 RGB array, got "
                             f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
        if self.frame_size is not None and image.shape[:2] != self.frame_size:
            raise ValueError(f"avatar: expected the model's frame size {self.frame_size[1]}x{self.frame_size[0]}, "
                             f"got {image.shape[1]}x{image.shape[0]}")
        with self._lock:
            self._avatar_id += 1
            self._avatar = encode_avatar(self._avatar_id, image)
            self._avatar_pending = True
        self._poke()

    def submit(self, value: np.ndarray, jacobian: np.ndarray) -> int:
        """Kx2 keypoints in [-1, 1] (motion already transferred) and Kx2x2 jacobians, float32 -> their sequence number.

        Never blocks: if the window of requests in flight is full, this replaces the one still waiting.
        """
        value = np.asarray(value, dtype=np.float32)
        jacobian = np.asarray(jacobian, dtype=np.float32)
        count = value.shape[0] if value.ndim == 2 else -1
        if value.shape != (count, 2) or jacobian.shape != (count, 2, 2) or not 1 <= count <= MAX_KEYPOINTS:
            raise ValueError(f"expected keypoints Kx2 and jacobians Kx2x2 (K from 1 to {MAX_KEYPOINTS}), got "
                             f"{value.shape} and {jacobian.shape}")
        if not (np.isfinite(value).all() and np.isfinite(jacobian).all()):
            raise ValueError("keypoints or jacobians hold NaN or infinite values")
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
            if self._queued is not None:
                self.dropped_up += 1
            self._queued = (sequence, encode_keypoints(sequence, value, jacobian))
            self._submitted_at[sequence] = time.perf_counter()
            if len(self._submitted_at) > 256:
                del self._submitted_at[min(self._submitted_at)]
        self._poke()
        return sequence

    def latest(self, wait_s: float = 0.0) -> RemoteFrame | None:
        """The newest frame received since the last call, or None.

        With ``wait_s`` > 0 and no frame waiting, sleeps until one arrives, for at most ``wait_s`` seconds (then
        None: the server may be away, which ``connected`` and ``status`` tell).
        """
        with self._frame_arrived:
            if wait_s > 0:
                self._frame_arrived.wait_for(lambda: self._latest is not None, wait_s)
            frame, self._latest = self._latest, None
            if frame is not None:
                self._delivered = frame.sequence
        return frame

    def close(self) -> None:
        """Close the connection and stop the thread (idempotent)."""
        self._closing = True
        self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self.connected = False
        self.status = "closed"

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has ended
                pass

    # ---- the background thread ------------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as error:  # a bug: say so rather than die silently
            log.exception("the remote renderer's thread failed")
            self.status = f"stopped: {type(error).__name__}: {error}"
            self._first_error = self._first_error or self.status
        finally:
            self.connected = False
            self._first_result.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=None, connect=HANDSHAKE_TIMEOUT_S, sock_connect=HANDSHAKE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            attempt = 0
            while not self._closing:
                try:
                    reason = self.disconnect_reason = await self._connection(http)
                    attempt = 0
                except RemoteError as error:
                    if not self._first_result.is_set():
                        self._first_error = str(error)
                        self._first_result.set()
                        return
                    self.error = reason = str(error)
                except Exception as error:  # _Transient, or unforeseen
                    if not isinstance(error, _Transient):  # keep the session alive; the story goes to the log
                        log.exception("remote rendering: the connection failed")
                    reason = str(error) or type(error).__name__
                    if not self._first_result.is_set() and time.monotonic() >= self._deadline:
                        self._first_error = f"cannot reach the render server at {self.url}: {reason}"
                        self._first_result.set()
                        return
                self.connected = False
                if self._closing:
                    break
                delay = self._delays[min(attempt, len(self._delays) - 1)]
                attempt += 1
                self.status = f"reconnecting to {self.url} in {delay:g} s (attempt {attempt}): {reason}"
                log.debug("%s", self.status)
                self._wake.clear()
                pause_end = time.monotonic() + delay
                while not self._closing and time.monotonic() < pause_end:
                    try:
                        await asyncio.wait_for(self._wake.wait(), pause_end - time.monotonic())
                    except asyncio.TimeoutError:
                        break
                    self._wake.clear()

    async def _connection(self, http: aiohttp.ClientSession) -> str:
        """One connection, from the handshake until it ends; returns why it ended, raises RemoteError or _Transient."""
        ws = await self._open(http)
        try:
            welcome = await self._handshake(ws)
            self.frame_size, self.session = welcome.frame_size, welcome.session
            with self._lock:
                self._in_flight.clear()
                self._avatar_pending = self._avatar is not None  # a new session has no avatar yet: send it again
            if self._first_result.is_set():
                self.reconnects += 1
            self.connected, self.error = True, None
            self.status = f"connected to {self.url} (session {welcome.session})"
            self._first_result.set()
            sender = asyncio.create_task(self._send_loop(ws))
            try:
                return await self._receive_loop(ws)
            finally:
                sender.cancel()
                self.connected = False
        finally:
            await ws.close()

    async def _open(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        ssl_option = await self._certificate_check() if self._tls else False
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            return await http.ws_connect(self.url, headers=headers, ssl=ssl_option, heartbeat=HEARTBEAT_S,
                                         max_msg_size=MAX_FRAME_BYTES + FRAME_HEADER.size)
        except aiohttp.ServerFingerprintMismatch as error:
            raise RemoteError(self._mismatch(error.got.hex())) from None
        except aiohttp.WSServerHandshakeError as error:
            raise self._refusal(error) from None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as error:
            raise _Transient(_describe(error)) from None

    def _refusal(self, error: aiohttp.WSServerHandshakeError) -> Exception:
        if error.status == 401:
            return RemoteError(f"the server refused the token (HTTP 401 from {self.url}): use the token it printed "
                               "at start-up (--token-file PATH, or $FOMM_LIVE_TOKEN)")
        if error.status == 429:
            wait = (error.headers or {}).get("Retry-After", "a few")
            return RemoteError(f"the server refuses this address for {wait} s after repeated wrong tokens (HTTP 429)")
        if error.status in (404, 405):
            return RemoteError(f"no render server at {self.url} (HTTP {error.status}): the path is /v1/session, after "
                               "a reverse proxy's prefix if there is one (wss://host/prefix/v1/session)")
        if error.status == 400:
            return RemoteError(f"{self.url} did not accept a WebSocket (HTTP 400): a proxy in between must pass "
                               "WebSocket upgrades (Upgrade and Connection headers)")
        if 500 <= error.status <= 599:  # a proxy or tunnel whose server is down or restarting (502, 503, 504,
            # Cloudflare's 520-530), or the server failing for a moment: worth retrying
            return _Transient(f"HTTP {error.status} {_reason(error.status)}".rstrip() + ": the render server (or the "
                              "proxy or tunnel in front of it) is not answering")
        return RemoteError(f"{self.url} answered HTTP {error.status} {_reason(error.status)}, not a WebSocket upgrade "
                           "(HTTP 101): is this the render server's address?")

    async def _certificate_check(self):
        """What aiohttp's ``ssl`` gets: a pinned fingerprint, or True (the system's authorities vouch for it)."""
        try:
            pinned = self._pinned or self._known.get(self._address)
        except CertificateError as error:
            raise RemoteError(str(error)) from None
        if pinned is not None:
            return aiohttp.Fingerprint(bytes.fromhex(pinned))
        try:
            await self._probe(ssl.create_default_context())
            return True
        except ssl.SSLCertVerificationError:
            pass
        der = await self._probe(_unverified_context())
        seen = der_fingerprint(der)
        try:
            self._known.remember(self._address, seen)
        except (CertificateError, OSError) as error:
            raise RemoteError(f"cannot remember the server's certificate in {self._known.path}: {error}") from None
        log.info("trusting the certificate of %s on first use: sha256 %s (remembered in %s)", self._address, seen,
                 self._known.path)
        return aiohttp.Fingerprint(bytes.fromhex(seen))

    async def _probe(self, context: ssl.SSLContext) -> bytes:
        """A TLS handshake with the server (nothing sent): its certificate, DER."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=context, server_hostname=self._host),
                HANDSHAKE_TIMEOUT_S)
        except ssl.SSLCertVerificationError:
            raise
        except (OSError, asyncio.TimeoutError) as error:
            raise _Transient(_describe(error)) from None
        try:
            return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()

    def _mismatch(self, seen: str) -> str:
        if self._pinned:
            where, fix = "the one given with --fingerprint", f"pass --fingerprint {seen} instead"
        else:
            where = f"the one remembered for it in {self._known.path}"
            fix = f"run with --fingerprint {seen}, or remove the entry for {self._address} from that file"
        expected = self._pinned or self._known.get(self._address)
        return (f"the server at {self._address} presented a certificate with fingerprint {seen}, not {expected} "
                f"({where}). If its certificate was changed on purpose, {fix}; otherwise someone may be "
                "intercepting the connection")

    async def _handshake(self, ws: aiohttp.ClientWebSocketResponse) -> Welcome:
        await ws.send_str(encode_text(Hello(PROTOCOL_VERSION, self._model_fingerprint)))
        try:
            message = await ws.receive(timeout=HANDSHAKE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise _Transient(f"no answer to hello within {HANDSHAKE_TIMEOUT_S:g} s") from None
        if message.type != aiohttp.WSMsgType.TEXT:
            raise _Transient(f"the connection ended during the handshake ({message.type.name})")
        try:
            reply = decode_text(message.data)
        except ProtocolError as error:
            raise RemoteError(f"the server's answer to hello is not understood: {error}") from None
        if isinstance(reply, ServerError):
            raise RemoteError(f"the server refused the session: {reply.message}")
        if not isinstance(reply, Welcome):
            raise RemoteError(f"expected welcome from the server, got {type(reply).__name__}")
        return reply

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            self._wake.clear()
            if self._closing:
                await ws.close()  # ends the receive loop
                return
            for message in self._take_outgoing():
                await ws.send_bytes(message)
                self.bytes_up += len(message)
            try:
                await asyncio.wait_for(self._wake.wait(), IN_FLIGHT_TIMEOUT_S / 4)
            except asyncio.TimeoutError:
                pass

    def _take_outgoing(self) -> list[bytes]:
        """The avatar if it changed, then keypoints while the window has room."""
        now = time.monotonic()
        with self._lock:
            outgoing = []
            if self._avatar_pending and self._avatar is not None:
                outgoing.append(self._avatar)
                self._avatar_pending = False
            for sequence, sent in list(self._in_flight.items()):
                if now - sent > IN_FLIGHT_TIMEOUT_S:
                    del self._in_flight[sequence]
            if self._queued is not None and len(self._in_flight) < self._window:
                sequence, message = self._queued
                self._queued = None
                self._in_flight[sequence] = now
                outgoing.append(message)
        return outgoing

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Frames and replies until the connection ends; returns why it ended."""
        code = None
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                self._on_frame(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                self.bytes_down += len(message.data)
                self._on_text(message.data)
            else:
                # The code the server sent, not ws.close_code: a server that drops the connection right after its
                # close frame makes our answer fail, and aiohttp then reports 1006.
                code = message.data if message.type == aiohttp.WSMsgType.CLOSE else ws.close_code
                break
        if self._closing:
            return "closed"
        if self._fatal:
            reason, self._fatal = self._fatal, None
            return f"the server closed the session: {reason}"
        if code == aiohttp.WSCloseCode.GOING_AWAY:
            return "the server is shutting down"
        return f"the connection was lost (close code {code}{', ' + _describe(ws.exception()) if ws.exception() else ''})"

    def _on_frame(self, data: bytes) -> None:
        received = time.perf_counter()
        self.bytes_down += len(data)
        try:
            header, image = decode_frame(data, self.frame_size)
        except ProtocolError as error:
            log.warning("dropped a frame from the server: %s", error)
            self.dropped_down += 1
            return
        with self._lock:
            for sequence in [s for s in self._in_flight if s <= header.sequence]:
                del self._in_flight[sequence]
            submitted = self._submitted_at.get(header.sequence, received)
            frame = RemoteFrame(image, header.sequence, (received - submitted) * 1000, header.server_ms)
            self.frames_received += 1
            newest = max(self._delivered, self._latest.sequence if self._latest is not None else 0)
            if header.sequence <= newest:
                self.dropped_down += 1  # older than one already delivered or waiting
            else:
                if self._latest is not None:
                    self.dropped_down += 1  # never picked up before this newer one came
                self._latest = frame
                self._frame_arrived.notify_all()
        self._wake.set()  # room in the window

    def _on_text(self, text: str) -> None:
        try:
            message = decode_text(text)
        except ProtocolError as error:
            log.warning("ignored a message from the server: %s", error)
            return
        if isinstance(message, AvatarReady):
            log.debug("the server encoded avatar %d in %.1f ms", message.avatar_id, message.ms)
        elif isinstance(message, ServerError):
            self.server_message = message.message
            log.warning("the render server says: %s", message.message)
            if message.fatal:
                self.error = self._fatal = message.message


def _unverified_context() -> ssl.SSLContext:
    """TLS without certificate checks: only to read a certificate whose fingerprint is then pinned."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _reason(status: int) -> str:
    """HTTP's name for ``status`` ("Forbidden"), or "" for a status it does not name."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown"
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorError) and error.os_error is not None:
        error = error.os_error
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno).lower()  # "connection refused", not "Connect call failed ('1.2.3.4', 8765)"
    return str(error) or type(error).__name__

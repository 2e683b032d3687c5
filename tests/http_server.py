"""A scriptable HTTP file server on 127.0.0.1 for download tests.

Serves byte strings by path, honours ``Range: bytes=N-`` requests, and can be
told to cut a response short, answer with an error status, send a web page,
leave out the Content-Length header (the body then ends when the connection
closes), or stall: trickle one byte at a time.  Every request is recorded as
(path, Range header or None).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What one path serves.

    cut_after: bytes sent before each of the first ``cuts`` responses is cut off.
    stall_after: bytes sent at full speed before each of the first ``stalls``
    responses continues one byte every ``trickle_every_s`` seconds, until the
    client gives up.  send_length: whether to send Content-Length.
    """

    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    cut_after: int | None = None
    cuts: int = 1
    honours_range: bool = True
    send_length: bool = True
    stall_after: int | None = None
    stalls: int = 1
    trickle_every_s: float = 0.1


@dataclass
class FileServer:
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def __enter__(self) -> "FileServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                server.requests.append((self.path, self.headers.get("Range")))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                if route.status != 200:
                    self.send_error(route.status)
                    return
                start = 0
                if route.honours_range and self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                    if start >= len(route.body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
                else:
                    self.send_response(200)
                payload = route.body[start:]
                self.send_header("Content-Type", route.content_type)
                if route.send_length:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self._send(route, payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a stall test)
                    pass
                self.close_connection = True

            def _send(self, route: Route, payload: bytes) -> None:
                if route.cut_after is not None and route.cuts > 0:
                    route.cuts -= 1
                    self.wfile.write(payload[: route.cut_after])
                    self.wfile.flush()
                    return
                if route.stall_after is not None and route.stalls > 0:
                    route.stalls -= 1
                    self.wfile.write(payload[: route.stall_after])
                    self.wfile.flush()
                    for index in range(route.stall_after, len(payload)):
                        time.sleep(route.trickle_every_s)
                        self.wfile.write(payload[index:index + 1])
                        self.wfile.flush()
                    return
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

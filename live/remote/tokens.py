"""The shared secret of a render server: made, read and compared; and the throttle on failed attempts.

The token is a random string kept in a file (mode 0600).  The server takes
``--token-file PATH`` (made with a fresh token if missing); the client reads
the same token from ``--token-file`` or from ``$FOMM_LIVE_TOKEN``, which the
server's start-up line sets.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections import OrderedDict
from pathlib import Path

TOKEN_ENV = "FOMM_LIVE_TOKEN"
MIN_TOKEN_LENGTH = 16


class TokenError(RuntimeError):
    """A token file that cannot be read or made, or a token too weak to use."""


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """(token, made now): the token in ``path``, or a fresh one written there (mode 0600) if the file does not exist."""
    if not path.exists():
        token = secrets.token_urlsafe(32)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(token + "\n")
        except OSError as error:
            raise TokenError(f"cannot write a new token to {path}: {error}") from None
        return token, True
    return read_token_file(path), False


def read_token_file(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace ignored); raises TokenError if missing, unreadable or weak."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise TokenError(f"cannot read the token file {path}: {error}") from None
    return check_token(token, f"the token in {path}")


def check_token(token: str, what: str) -> str:
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or any(c.isspace() for c in token):
        raise TokenError(f"{what}: expected at least {MIN_TOKEN_LENGTH} printable characters without spaces, "
                         f"found {len(token)} characters")
    return token


def client_token(token_file: str | Path | None) -> str:
    """The client's token: from ``token_file`` if given, else ``$FOMM_LIVE_TOKEN``; raises TokenError."""
    if token_file is not None:
        return read_token_file(Path(token_file))
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise TokenError(f"no token: pass --token-file PATH or set {TOKEN_ENV} (the server prints the command "
                         "to run, token included)")
    return check_token(token, f"${TOKEN_ENV}")


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>``, compared in constant time."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[len("Bearer "):].strip().encode(), token.encode())


class FailureThrottle:
    """Locks out an address after repeated failed attempts: after ``allowed`` failures within ``window_s``,
    every attempt from it (even with the right token) is refused for 1 s, doubling with each further failure
    up to ``max_lockout_s``.  A success clears the address.  At most ``capacity`` addresses are remembered
    (the oldest forgotten first), so a flood of addresses cannot grow it without bound.
    """

    def __init__(self, allowed: int = 5, window_s: float = 60.0, max_lockout_s: float = 60.0, capacity: int = 10000,
                 clock=time.monotonic):
        self.allowed, self.window_s, self.max_lockout_s, self.capacity = allowed, window_s, max_lockout_s, capacity
        self._clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()  # address -> failure times in the window
        self._locked_until: dict[str, float] = {}

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        return max(0.0, self._locked_until.get(address, 0.0) - self._clock())

    def failed(self, address: str) -> None:
        now = self._clock()
        times = [t for t in self._failures.pop(address, []) if now - t < self.window_s] + [now]
        self._failures[address] = times
        if len(times) >= self.allowed:
            self._locked_until[address] = now + min(self.max_lockout_s, 2.0 ** (len(times) - self.allowed))
        while len(self._failures) > self.capacity:
            oldest, _ = self._failures.popitem(last=False)
            self._locked_until.pop(oldest, None)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
        self._locked_until.pop(address, None)

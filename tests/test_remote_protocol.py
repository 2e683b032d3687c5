"""The remote-rendering wire format, certificates, tokens and the failure throttle, without a server."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib

import cv2
import numpy as np
import pytest

from live.remote.addresses import is_loopback
from live.remote.client import RemoteError, RemoteRenderer
from live.remote.protocol import (
    AVATAR_HEADER,
    KEYPOINTS_HEADER,
    KIND_KEYPOINTS,
    MAX_AVATAR_BYTES,
    AvatarReady,
    Hello,
    ProtocolError,
    ServerError,
    Welcome,
    decode_avatar,
    decode_avatar_png,
    decode_frame,
    decode_keypoints,
    decode_text,
    encode_avatar,
    encode_frame,
    encode_jpeg,
    encode_keypoints,
    encode_text,
)
from live.remote.tls import CertificateError, KnownServers, certificate_fingerprint, ensure_certificate, normalise_fingerprint
from live.remote.tokens import FailureThrottle, TokenError, bearer_matches, client_token, load_or_create_token

FRAME = (256, 256)


def keypoints(count: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (count, 2)).astype(np.float32),
            (np.eye(2) + rng.normal(0, 0.1, (count, 2, 2))).astype(np.float32))


def test_keypoints_round_trip_in_under_a_kilobyte():
    value, jacobian = keypoints()
    data = encode_keypoints(7, value, jacobian)
    assert len(data) == KEYPOINTS_HEADER.size + 24 * 10 == 252
    message = decode_keypoints(data, num_kp=10)
    assert message.sequence == 7
    np.testing.assert_array_equal(message.value, value)
    np.testing.assert_array_equal(message.jacobian, jacobian)


@pytest.mark.parametrize("damage, expected", [
    (lambda d: d[:-1], "251 bytes: expected 252"),
    (lambda d: d + b"\0", "253 bytes: expected 252"),
    (lambda d: b"", "0 bytes"),
    (lambda d: bytes([9]) + d[1:], "bad header (kind 9"),
    (lambda d: d[:1] + b"\1" + d[2:], "reserved 1"),
])
def test_keypoints_truncated_or_with_a_bad_header_are_refused(damage, expected):
    with pytest.raises(ProtocolError, match=expected.replace("(", r"\(")):
        decode_keypoints(damage(encode_keypoints(1, *keypoints())), num_kp=10)


def test_keypoints_of_another_count_zero_sequence_or_bad_values_are_refused():
    value, jacobian = keypoints(count=5)
    data = encode_keypoints(1, value, jacobian)
    with pytest.raises(ProtocolError, match=r"132 bytes: expected 252 \(12 \+ 24 x 10 keypoints\)"):
        decode_keypoints(data, num_kp=10)
    with pytest.raises(ProtocolError, match="5 keypoints, the model has 4"):
        decode_keypoints(KEYPOINTS_HEADER.pack(KIND_KEYPOINTS, 0, 5, 1) + bytes(24 * 4), num_kp=4)
    with pytest.raises(ProtocolError, match="start at 1"):
        decode_keypoints(encode_keypoints(0, *keypoints()), num_kp=10)
    value, jacobian = keypoints()
    value[3, 1] = np.nan
    jacobian[0, 0, 0] = np.inf
    with pytest.raises(ProtocolError, match="1 keypoint values are NaN or infinite"):
        decode_keypoints(encode_keypoints(1, value, jacobian), num_kp=10)
    value, jacobian = keypoints()
    jacobian[2, 1, 0] = -3e4
    with pytest.raises(ProtocolError, match=r"jacobians must lie within \+-10000, found 3e\+04"):
        decode_keypoints(encode_keypoints(1, value, jacobian), num_kp=10)


def test_avatar_round_trip_is_lossless():
    image = np.random.default_rng(1).integers(0, 256, (*FRAME, 3), dtype=np.uint8)
    message = decode_avatar(encode_avatar(3, image))
    assert message.avatar_id == 3
    np.testing.assert_array_equal(decode_avatar_png(message.png, FRAME), image)


def _png_header(width: int, height: int) -> bytes:
    """A PNG file's signature and header chunk claiming width x height RGB, and an empty image-data chunk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_avatar_pixel_bombs_wrong_sizes_and_non_png_are_refused_before_decoding():
    with pytest.raises(ProtocolError, match="40000x40000 pixels: expected at most 1048576"):
        decode_avatar_png(_png_header(40000, 40000), FRAME)
    with pytest.raises(ProtocolError, match="avatar of 128x96: expected the model's frame size, 256x256"):
        decode_avatar_png(_png_header(128, 96), FRAME)
    with pytest.raises(ProtocolError, match="does not decode"):
        decode_avatar_png(_png_header(256, 256), FRAME)  # claims the right size, holds no pixels
    _, jpeg = cv2.imencode(".jpg", np.zeros((256, 256, 3), np.uint8))
    with pytest.raises(ProtocolError, match="expected a PNG file"):
        decode_avatar_png(jpeg.tobytes(), FRAME)
    grey = cv2.imencode(".png", np.zeros((256, 256), np.uint8))[1].tobytes()
    with pytest.raises(ProtocolError, match=r"8-bit RGB, found shape \(256, 256\)"):
        decode_avatar_png(grey, FRAME)
    with pytest.raises(ProtocolError, match="too short"):
        decode_avatar(AVATAR_HEADER.pack(2, 0, 0, 1))
    with pytest.raises(ProtocolError, match=f"expected at most {MAX_AVATAR_BYTES}"):
        decode_avatar(AVATAR_HEADER.pack(2, 0, 0, 1) + b"\x89PNG\r\n\x1a\n" + bytes(MAX_AVATAR_BYTES))


def test_frame_round_trip_within_jpeg_loss():
    image = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 256, (*FRAME, 3), dtype=np.uint8), (9, 9), 3)
    header, decoded = decode_frame(encode_frame(42, 12.5, encode_jpeg(image)), FRAME)
    assert (header.sequence, header.server_ms) == (42, 12.5)
    assert decoded.shape == (*FRAME, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - image).mean() < 2.0
    with pytest.raises(ProtocolError, match="expected a 128x128 JPEG, found 256x256"):
        decode_frame(encode_frame(1, 1.0, encode_jpeg(image)), (128, 128))
    with pytest.raises(ProtocolError, match="found nothing decodable"):
        decode_frame(encode_frame(1, 1.0, b"not a jpeg"), FRAME)


def test_text_messages_round_trip_and_are_checked():
    for message in (Hello(1, "ab" * 32), Welcome(1, 5, (256, 256), 10), AvatarReady(2, 31.5), ServerError("full", True)):
        assert decode_text(encode_text(message)) == message
    for text, expected in [
        ("{", "not JSON"), ("[1, 2]", "expected a JSON object, found list"), ('{"type": "rm -rf"}', "unknown type"),
        ('{"type": "hello", "protocol": "1", "model": ""}', "'protocol' must be int, found str"),
        ('{"type": "hello", "protocol": true, "model": ""}', "'protocol' must be int, found bool"),
        ('{"type": "hello", "protocol": 1, "model": "../../etc/passwd"}', "64 hex digits"),
        ('{"type": "welcome", "protocol": 1, "session": 1, "frame_size": [0, 1e9], "num_kp": 10}', "frame_size"),
        ("[" * 100000, "expected at most 4096"),
    ]:
        with pytest.raises(ProtocolError, match=expected):
            decode_text(text)


def test_self_signed_certificate_is_made_once_and_kept(tmp_path):
    cert, key, made = ensure_certificate(tmp_path / "server")
    assert made and cert.is_file() and key.is_file()
    assert os.stat(key).st_mode & 0o777 == 0o600
    fingerprint = certificate_fingerprint(cert)
    assert len(fingerprint) == 64
    again = ensure_certificate(tmp_path / "server")
    assert again == (cert, key, False) and certificate_fingerprint(cert) == fingerprint
    assert certificate_fingerprint(ensure_certificate(tmp_path / "other")[0]) != fingerprint


def test_fingerprints_are_accepted_as_users_paste_them():
    digits = "0123456789abcdef" * 4
    colons = ":".join(digits[i:i + 2] for i in range(0, 64, 2)).upper()
    assert normalise_fingerprint(f"SHA256:{colons}") == digits
    assert normalise_fingerprint(f"  {digits}\n") == digits
    with pytest.raises(ValueError, match="64 hex digits"):
        normalise_fingerprint(digits[:-1])


def test_known_servers_remember_and_refuse_to_guess_from_a_damaged_file(tmp_path):
    known = KnownServers(tmp_path / "known_servers.json")
    assert known.get("example.org:8765") is None
    known.remember("example.org:8765", "a" * 64)
    known.remember("other:1", "b" * 64)
    assert KnownServers(known.path).get("example.org:8765") == "a" * 64
    assert json.loads(known.path.read_text()) == {"example.org:8765": "a" * 64, "other:1": "b" * 64}
    known.path.write_text("[1, 2]")
    with pytest.raises(CertificateError, match="not a JSON object"):
        known.get("example.org:8765")


def test_token_file_is_made_private_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "secret" / "token"
    token, made = load_or_create_token(path)
    assert made and len(token) >= 32 and os.stat(path).st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == (token, False)
    assert client_token(path) == token
    monkeypatch.setenv("FOMM_LIVE_TOKEN", token)
    assert client_token(None) == token
    monkeypatch.delenv("FOMM_LIVE_TOKEN")
    with pytest.raises(TokenError, match="pass --token-file PATH or set FOMM_LIVE_TOKEN"):
        client_token(None)
    path.write_text("short\n")
    with pytest.raises(TokenError, match="at least 16 printable characters without spaces, found 5"):
        load_or_create_token(path)
    with pytest.raises(TokenError, match="cannot read the token file"):
        client_token(tmp_path / "missing")


def test_bearer_header_must_match_exactly():
    token = "t" * 40
    assert bearer_matches(f"Bearer {token}", token)
    for header in (None, "", token, f"Basic {token}", f"Bearer {token}x", f"Bearer {token[:-1]}", "Bearer "):
        assert not bearer_matches(header, token)


def test_throttle_locks_out_an_address_after_repeated_failures_with_growing_pauses():
    now = [0.0]
    throttle = FailureThrottle(allowed=3, window_s=60, max_lockout_s=8, clock=lambda: now[0])
    for _ in range(2):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 1.0
    assert throttle.retry_after("10.0.0.2") == 0  # other addresses are not affected
    now[0] = 1.0
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 2.0
    for _ in range(5):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 8.0  # capped
    now[0] = 100.0  # the failures left the window: one more failure is the first again
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    throttle.failed("10.0.0.1")
    throttle.succeeded("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 0


def test_throttle_forgets_the_oldest_addresses_beyond_its_capacity():
    throttle = FailureThrottle(allowed=1, capacity=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) == 100 and len(throttle._locked_until) == 100
    assert throttle.retry_after("10.0.3.231") > 0 and throttle.retry_after("10.0.0.0") == 0


def test_loopback_addresses():
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "192.168.1.2", "::", "example.org", "localhost.example.org"):
        assert not is_loopback(host), host


def test_client_refuses_plain_ws_beyond_this_machine_and_bad_urls(tmp_path):
    known = tmp_path / "known.json"
    with pytest.raises(RemoteError, match="only to this machine .* not to example.org; use wss://"):
        RemoteRenderer("ws://example.org:8765/v1/session", "t" * 20, known_hosts=known)
    with pytest.raises(RemoteError, match="expected a server URL like wss://"):
        RemoteRenderer("https://example.org/v1/session", "t" * 20, known_hosts=known)
    with pytest.raises(RemoteError, match="--fingerprint: expected a SHA-256 fingerprint"):
        RemoteRenderer("wss://example.org/v1/session", "t" * 20, fingerprint="abc", known_hosts=known)
    RemoteRenderer("ws://127.0.0.1:9/v1/session", "t" * 20, known_hosts=known)  # allowed: a local proxy


def test_client_checks_what_the_caller_submits(tmp_path):
    client = RemoteRenderer("wss://127.0.0.1:9/v1/session", "t" * 20, known_hosts=tmp_path / "known.json")
    value, jacobian = keypoints()
    with pytest.raises(ValueError, match=r"Kx2 and jacobians Kx2x2 .* got \(10, 3\) and \(10, 2, 2\)"):
        client.submit(np.zeros((10, 3), np.float32), jacobian)
    value[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        client.submit(value, jacobian)
    with pytest.raises(ValueError, match="HxWx3 uint8 RGB"):
        client.set_avatar(np.zeros((256, 256), np.uint8))
    # Before start, submissions wait; a newer one replaces the one waiting (newest wins), and is counted.
    assert client.submit(*keypoints()) == 1 and client.submit(*keypoints()) == 2
    assert client.dropped_up == 1


def test_start_says_when_nothing_answers_at_that_address(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = RemoteRenderer(f"wss://127.0.0.1:{port}/v1/session", "t" * 20, known_hosts=tmp_path / "known.json",
                            reconnect_delays=(0.2,))
    started = time.monotonic()
    with pytest.raises(RemoteError, match=f"cannot reach the render server at wss://127.0.0.1:{port}/v1/session: "
                                          "connection refused"):
        client.start(timeout=1.0)
    assert time.monotonic() - started < 3.0 and not client.connected
    assert not (tmp_path / "known.json").exists()

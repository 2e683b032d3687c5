"""The wire protocol of remote rendering: every message, its encoding, and its validation.

One WebSocket per session (path :data:`SESSION_PATH`, the token in an
``Authorization: Bearer`` header of the upgrade request).  Control messages
are small JSON text messages; the per-frame data are binary messages whose
first byte names their kind.  All integers and floats are little-endian.

Client -> server:

- text ``{"type": "hello", "protocol": 1, "model": "<sha256 hex of the keypoint detector's weights, or empty>"}``,
  first and once;
- binary AVATAR: header ``<BBHI`` (kind 2, 0, 0, avatar id) + the avatar crop as a PNG file (HxWx3 at the
  model's frame size, at most :data:`MAX_AVATAR_BYTES` and :data:`MAX_AVATAR_PIXELS`);
- binary KEYPOINTS: header ``<BBHQ`` (kind 1, 0, K, sequence) + K x 2 float32 values (x, y) + K x 2 x 2 float32
  jacobians: 12 + 24 K bytes, 252 for K = 10.

Server -> client:

- text ``welcome`` (``protocol``, ``session``, ``frame_size`` [height, width], ``num_kp``), ``avatar``
  (``id``, ``ms``: the avatar was encoded), ``error`` (``message``, ``fatal``: the session ends after a
  fatal one);
- binary FRAME: header ``<BBHQf`` (kind 3, 0, 0, sequence, server milliseconds) + the rendered frame as a
  JPEG file: 16 bytes + the JPEG (about 10-20 KB for 256x256 at quality 90).

Nothing here touches the file system, and nothing decoded is more than numbers, JSON scalars and
pixel arrays: a message either decodes into one of the dataclasses below or raises
:class:`ProtocolError` saying what was expected and what was found.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from engine.backends.base import state_dicts_digest

PROTOCOL_VERSION = 1
SESSION_PATH = "/v1/session"

KIND_KEYPOINTS = 1
KIND_AVATAR = 2
KIND_FRAME = 3

KEYPOINTS_HEADER = struct.Struct("<BBHQ")  # kind, 0, K, sequence
AVATAR_HEADER = struct.Struct("<BBHI")  # kind, 0, 0, avatar id
FRAME_HEADER = struct.Struct("<BBHQf")  # kind, 0, 0, sequence, server milliseconds

MAX_TEXT_BYTES = 4096
MAX_KEYPOINTS = 64
MAX_AVATAR_BYTES = 2 * 1024 * 1024
MAX_AVATAR_PIXELS = 1024 * 1024
MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_MESSAGE_BYTES = MAX_AVATAR_BYTES + AVATAR_HEADER.size  # the WebSocket's own limit: larger closes the session
# Bounds on what a render can take: driving keypoints live in [-1, 1] (motion transfer can carry them somewhat
# outside), their jacobians near the identity.  Finite values beyond these make no sense and are refused.
MAX_ABS_VALUE = 100.0
MAX_ABS_JACOBIAN = 1.0e4
JPEG_QUALITY = 90

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the message says what was expected and what was found."""


@dataclass(frozen=True)
class Hello:
    protocol: int
    model: str  # sha256 hex of the client's keypoint detector weights ("" when the client does not say)


@dataclass(frozen=True)
class Welcome:
    protocol: int
    session: int
    frame_size: tuple[int, int]  # (height, width)
    num_kp: int


@dataclass(frozen=True)
class AvatarReady:
    avatar_id: int
    ms: float  # the server's time to decode and encode it


@dataclass(frozen=True)
class ServerError:
    message: str
    fatal: bool  # the server closes the session after a fatal error


@dataclass(frozen=True)
class KeypointsMessage:
    sequence: int
    value: np.ndarray  # K x 2 float32, finite, |v| <= MAX_ABS_VALUE
    jacobian: np.ndarray  # K x 2 x 2 float32, finite, |j| <= MAX_ABS_JACOBIAN


@dataclass(frozen=True)
class AvatarMessage:
    avatar_id: int
    png: bytes  # checked with decode_avatar_png before use


@dataclass(frozen=True)
class FrameMessage:
    sequence: int
    server_ms: float


# ---- text messages --------------------------------------------------------------------------------------------


def encode_text(message: Hello | Welcome | AvatarReady | ServerError) -> str:
    if isinstance(message, Hello):
        fields = {"type": "hello", "protocol": message.protocol, "model": message.model}
    elif isinstance(message, Welcome):
        fields = {"type": "welcome", "protocol": message.protocol, "session": message.session,
                  "frame_size": list(message.frame_size), "num_kp": message.num_kp}
    elif isinstance(message, AvatarReady):
        fields = {"type": "avatar", "id": message.avatar_id, "ms": round(message.ms, 3)}
    else:
        fields = {"type": "error", "message": message.message, "fatal": message.fatal}
    return json.dumps(fields)


def decode_text(text: str) -> Hello | Welcome | AvatarReady | ServerError:
    """A JSON control message -> its dataclass; raises ProtocolError."""
    if len(text) > MAX_TEXT_BYTES:
        raise ProtocolError(f"text message of {len(text)} characters: expected at most {MAX_TEXT_BYTES}")
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ProtocolError(f"text message is not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(f"text message: expected a JSON object, found {type(fields).__name__}")
    kind = fields.get("type")
    if kind == "hello":
        model = _field(fields, "model", str)
        if model and not _is_hex(model, 64):
            raise ProtocolError(f"hello: model must be 64 hex digits or empty, found {model[:80]!r}")
        return Hello(protocol=_field(fields, "protocol", int), model=model.lower())
    if kind == "welcome":
        size = _field(fields, "frame_size", list)
        if len(size) != 2 or not all(type(v) is int and 16 <= v <= 4096 for v in size):
            raise ProtocolError(f"welcome: frame_size must be [height, width] from 16 to 4096, found {size!r}")
        return Welcome(protocol=_field(fields, "protocol", int), session=_field(fields, "session", int),
                       frame_size=(size[0], size[1]), num_kp=_field(fields, "num_kp", int))
    if kind == "avatar":
        return AvatarReady(avatar_id=_field(fields, "id", int), ms=float(_field(fields, "ms", (int, float))))
    if kind == "error":
        return ServerError(message=_field(fields, "message", str), fatal=_field(fields, "fatal", bool))
    raise ProtocolError(f"text message: unknown type {str(kind)[:40]!r} (expected hello, welcome, avatar or error)")


def _field(fields: dict, name: str, kind: type | tuple[type, ...]):
    value = fields.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError(f"{fields.get('type')}: field {name!r} must be {expected}, found {type(value).__name__}")
    return value


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdefABCDEF" for c in text)


# ---- binary messages ------------------------------------------------------------------------------------------


def encode_keypoints(sequence: int, value: np.ndarray, jacobian: np.ndarray) -> bytes:
    """value Kx2, jacobian Kx2x2 (float, converted to float32) -> a KEYPOINTS message of 12 + 24 K bytes."""
    value = np.ascontiguousarray(value, dtype="<f4")
    jacobian = np.ascontiguousarray(jacobian, dtype="<f4")
    count = value.shape[0]
    return KEYPOINTS_HEADER.pack(KIND_KEYPOINTS, 0, count, sequence) + value.tobytes() + jacobian.tobytes()


def encode_avatar(avatar_id: int, image: np.ndarray) -> bytes:
    """HxWx3 uint8 RGB -> an AVATAR message (PNG: lossless, so the server encodes exactly this picture)."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ProtocolError("the avatar could not be encoded as PNG")
    return AVATAR_HEADER.pack(KIND_AVATAR, 0, 0, avatar_id) + png.tobytes()


def encode_jpeg(image: np.ndarray) -> bytes:
    """HxWx3 uint8 RGB -> JPEG file bytes at quality JPEG_QUALITY."""
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ProtocolError("the frame could not be encoded as JPEG")
    return jpeg.tobytes()


def encode_frame(sequence: int, server_ms: float, jpeg: bytes) -> bytes:
    """A FRAME message: the header, then the JPEG file."""
    return FRAME_HEADER.pack(KIND_FRAME, 0, 0, sequence, server_ms) + jpeg


def message_kind(data: bytes) -> int:
    if not data:
        raise ProtocolError("empty binary message")
    return data[0]


def decode_keypoints(data: bytes, num_kp: int) -> KeypointsMessage:
    """A KEYPOINTS message for a model with ``num_kp`` keypoints -> KeypointsMessage; raises ProtocolError."""
    expected_size = KEYPOINTS_HEADER.size + 24 * num_kp
    if len(data) != expected_size:
        raise ProtocolError(f"keypoints message of {len(data)} bytes: expected {expected_size} "
                            f"({KEYPOINTS_HEADER.size} + 24 x {num_kp} keypoints)")
    kind, reserved, count, sequence = KEYPOINTS_HEADER.unpack_from(data)
    if kind != KIND_KEYPOINTS or reserved != 0:
        raise ProtocolError(f"keypoints message: bad header (kind {kind}, reserved {reserved})")
    if count != num_kp:
        raise ProtocolError(f"keypoints message: {count} keypoints, the model has {num_kp}")
    if sequence == 0:
        raise ProtocolError("keypoints message: sequence numbers start at 1, found 0")
    floats = np.frombuffer(data, dtype="<f4", offset=KEYPOINTS_HEADER.size).astype(np.float32)
    value = floats[: 2 * count].reshape(count, 2)
    jacobian = floats[2 * count:].reshape(count, 2, 2)
    _check_bounded("keypoint values", value, MAX_ABS_VALUE)
    _check_bounded("jacobians", jacobian, MAX_ABS_JACOBIAN)
    return KeypointsMessage(sequence, value, jacobian)


def _check_bounded(what: str, array: np.ndarray, bound: float) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        raise ProtocolError(f"keypoints message: {int((~finite).sum())} {what} are NaN or infinite")
    largest = float(np.abs(array).max(initial=0.0))
    if largest > bound:
        raise ProtocolError(f"keypoints message: {what} must lie within +-{bound:g}, found {largest:.4g}")


def decode_avatar(data: bytes) -> AvatarMessage:
    """An AVATAR message -> AvatarMessage (its PNG not yet decoded: see decode_avatar_png); raises ProtocolError."""
    if len(data) < AVATAR_HEADER.size + len(_PNG_SIGNATURE):
        raise ProtocolError(f"avatar message of {len(data)} bytes: too short to hold a PNG file")
    kind, reserved, zero, avatar_id = AVATAR_HEADER.unpack_from(data)
    if kind != KIND_AVATAR or reserved != 0 or zero != 0:
        raise ProtocolError(f"avatar message: bad header (kind {kind}, reserved {reserved}, {zero})")
    png = data[AVATAR_HEADER.size:]
    if len(png) > MAX_AVATAR_BYTES:
        raise ProtocolError(f"avatar of {len(png)} bytes: expected at most {MAX_AVATAR_BYTES}")
    return AvatarMessage(avatar_id, bytes(png))


def png_size(png: bytes) -> tuple[int, int]:
    """(height, width) from a PNG file's header (IHDR), read without decoding; raises ProtocolError."""
    if len(png) < 24 or png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ProtocolError("avatar: expected a PNG file, found something else")
    width, height = struct.unpack(">II", png[16:24])
    return height, width


def decode_avatar_png(png: bytes, frame_size: tuple[int, int]) -> np.ndarray:
    """PNG bytes -> HxWx3 uint8 RGB of exactly ``frame_size``; raises ProtocolError.

    The size and pixel count are read from the PNG header and checked before
    anything is decompressed, so a small file claiming a huge picture costs nothing.
    """
    height, width = png_size(png)
    if height * width > MAX_AVATAR_PIXELS:
        raise ProtocolError(f"avatar of {width}x{height} pixels: expected at most {MAX_AVATAR_PIXELS} pixels")
    if (height, width) != tuple(frame_size):
        raise ProtocolError(f"avatar of {width}x{height}: expected the model's frame size, "
                            f"{frame_size[1]}x{frame_size[0]}")
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ProtocolError(f"avatar: the PNG file ({len(png)} bytes) does not decode")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != tuple(frame_size):
        raise ProtocolError(f"avatar: expected {frame_size[1]}x{frame_size[0]} 8-bit RGB, found shape {image.shape} "
                            f"{image.dtype}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_frame(data: bytes, frame_size: tuple[int, int]) -> tuple[FrameMessage, np.ndarray]:
    """A FRAME message -> (FrameMessage, HxWx3 uint8 RGB of ``frame_size``); raises ProtocolError."""
    if len(data) <= FRAME_HEADER.size or len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame message of {len(data)} bytes: expected {FRAME_HEADER.size} to {MAX_FRAME_BYTES}")
    kind, _, _, sequence, server_ms = FRAME_HEADER.unpack_from(data)
    if kind != KIND_FRAME:
        raise ProtocolError(f"frame message: bad kind {kind}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8, offset=FRAME_HEADER.size), cv2.IMREAD_COLOR)
    if image is None or image.shape[:2] != tuple(frame_size):
        found = "nothing decodable" if image is None else f"{image.shape[1]}x{image.shape[0]}"
        raise ProtocolError(f"frame: expected a {frame_size[1]}x{frame_size[0]} JPEG, found {found}")
    return FrameMessage(sequence, float(server_ms)), cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# ---- the model's identity -------------------------------------------------------------------------------------


def keypoint_detector_fingerprint(model) -> str:
    """sha256 hex of the keypoint detector's parameters and buffers (``model``: a loaded FirstOrderModel).

    The client computes keypoints and the server renders from them: both must
    use the same detector weights, loaded the same way (``load_model``'s
    defaults), or the avatar moves wrongly without any error.
    """
    return state_dicts_digest([model.kp_detector], as_float32=True)

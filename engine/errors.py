"""Exceptions raised by the engine.

Each one carries a message that says what was expected, what was found and,
where there is one, what to do about it.  All derive from :class:`EngineError`
so that callers (the live loop) can catch the engine's failures in one place.
"""


def one_line(error: BaseException, limit: int = 400) -> str:
    """``"<type>: <message>"`` on one line (a library's multi-line report squeezed), at most ``limit`` characters:
    its head and its tail, where OpenVINO and TensorRT put the cause after stacked "Exception from ..." lines."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


class EngineError(Exception):
    """Base class of every error the engine raises on bad input."""


class ConfigError(EngineError, ValueError):
    """A model config file is missing, unreadable or describes no valid model."""


class CheckpointError(EngineError, ValueError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit its config."""


class ImageError(EngineError, ValueError):
    """An image handed to the engine has the wrong shape, dtype or value range."""


class MotionError(EngineError, ValueError):
    """Keypoints are unusable for motion transfer (e.g. a degenerate reference pose)."""

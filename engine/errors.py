"""Exceptions raised by the engine.

Each one carries a message that says what was expected, what was found and,
where there is one, what to do about it.  All derive from :class:`EngineError`
so that callers (the live loop) can catch the engine's failures in one place.
"""


def squeezed(text: str, limit: int = 400) -> str:
    """``text`` on one line (runs of whitespace, newlines included, made one space), at most ``limit`` characters:
    its head and its tail, where OpenVINO and TensorRT put the cause after stacked "Exception from ..." lines."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def one_line(error: BaseException, limit: int = 400) -> str:
    """``"<type>: <message>"`` of a (library's, many-line) report, :func:`squeezed`."""
    return squeezed(f"{type(error).__name__}: {error}", limit)


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

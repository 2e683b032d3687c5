"""The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012): smooth when still, responsive when moving."""

from __future__ import annotations

import math

import numpy as np


class OneEuroFilter:
    """Adaptive low-pass filter over a stream of float vectors sampled at known times.

    min_cutoff (Hz): smoothing at rest, lower is smoother; beta: how fast the
    cutoff rises with speed, higher follows fast motion with less lag;
    derivative_cutoff (Hz): smoothing of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, derivative_cutoff: float = 1.0):
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.derivative_cutoff = derivative_cutoff
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time: float | None = None

    def reset(self, value: np.ndarray | None = None, time: float | None = None) -> None:
        """Forget the past; start again from ``value`` if given."""
        self._value = None if value is None else np.asarray(value, dtype=np.float64)
        self._speed = None if value is None else np.zeros_like(self._value)
        self._time = time

    def __call__(self, value: np.ndarray, time: float) -> np.ndarray:
        """Filter ``value`` observed at ``time`` (seconds, increasing); returns the smoothed value."""
        value = np.asarray(value, dtype=np.float64)
        if self._value is None or self._time is None or time <= self._time:
            self.reset(value, time)
            return value.copy()
        elapsed = time - self._time
        speed = (value - self._value) / elapsed
        self._speed = self._speed + _alpha(self.derivative_cutoff, elapsed) * (speed - self._speed)
        cutoff = self.min_cutoff + self.beta * np.abs(self._speed)
        self._value = self._value + _alpha(cutoff, elapsed) * (value - self._value)
        self._time = time
        return self._value.copy()


def _alpha(cutoff, elapsed: float):
    """Smoothing factor of a first-order low-pass filter with this cutoff (Hz) over ``elapsed`` seconds."""
    tau = 1.0 / (2 * math.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / elapsed)

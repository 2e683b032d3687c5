"""The render stage on a server: keypoints go up, rendered squares come down, and the camera image stays here.

Wraps :class:`live.remote.client.RemoteRenderer`, which never blocks: each
frame's keypoints are submitted and the newest square received so far is
taken, so the output runs at the pace of this machine and shows the server's
frames as they arrive.  An offline render (``in_order``) waits instead for
the square of each frame's own keypoints, so that every frame of the driving
video is rendered, in order.  While the server is away the stage returns None (the
output holds the last frame) and raises the "render" condition, which the
output draws on the held frame; the client reconnects by itself and sends the
avatar again.
"""

from __future__ import annotations

import time

import numpy as np

from engine import FirstOrderModel, Keypoints
from engine.animator import keypoints_of

from ..remote.client import RemoteFrame, RemoteRenderer
from ..status import StatusBoard


RESEND_AFTER_S = 2.0  # in order: keypoints lost with a dropped connection are sent again after this long


class RemoteRenderTimeout(RuntimeError):
    """In order, the server did not render a frame in time (it is away and did not come back)."""


class RemoteRender:
    """client: a started RemoteRenderer; model: this machine's model, whose keypoint detector gives the avatar's
    keypoints for the motion transfer done here (the server checks that its weights are the same); in_order:
    wait for each frame's own square, up to ``timeout_s`` (offline renders)."""

    def __init__(self, client: RemoteRenderer, model: FirstOrderModel, status: StatusBoard, in_order: bool = False,
                 timeout_s: float = 60.0):
        self.client = client
        self.model = model
        self.status = status
        self.in_order = in_order
        self.timeout_s = timeout_s
        self._round_trip_ms = 0.0
        self._server_ms = 0.0

    def set_avatar(self, crop: np.ndarray) -> Keypoints:
        self.client.set_avatar(crop)
        return keypoints_of(self.model, crop, "avatar")

    def render(self, keypoints: Keypoints) -> np.ndarray | None:
        value, jacobian = keypoints.value[0].cpu().numpy(), keypoints.jacobian[0].cpu().numpy()
        sequence = self.client.submit(value, jacobian)
        frame = self._wait_for(sequence, value, jacobian) if self.in_order else self.client.latest()
        self._report_connection()
        if frame is None:
            return None
        self._round_trip_ms, self._server_ms = frame.round_trip_ms, frame.server_ms
        return frame.image

    def _wait_for(self, sequence: int, value: np.ndarray, jacobian: np.ndarray) -> RemoteFrame:
        """The square of keypoints ``sequence`` (or of a later submit): sleeps until each frame arrives, sends the
        keypoints again every RESEND_AFTER_S without their square, and gives up after ``timeout_s``."""
        now = time.monotonic()
        deadline, resend_at = now + self.timeout_s, now + RESEND_AFTER_S
        while now < deadline:
            frame = self.client.latest(wait_s=min(deadline, resend_at) - now)
            if frame is not None and frame.sequence >= sequence:
                return frame
            now = time.monotonic()
            if now >= resend_at:  # lost with a connection: ask again
                self._report_connection()
                sequence, resend_at = self.client.submit(value, jacobian), now + RESEND_AFTER_S
        raise RemoteRenderTimeout(f"the render server rendered nothing for {self.timeout_s:g} s ({self.client.status})")

    def _report_connection(self) -> None:
        if self.client.connected:
            self.status.clear("render", f"render server {self.client.url} is back")
        else:
            self.status.set("render", f"render server lost: {self.client.status}")

    def timings(self) -> dict[str, float]:
        return {"round trip": self._round_trip_ms, "server": self._server_ms}

    def dropped(self) -> int:
        """Stale keypoints and frames the link dropped (newest wins both ways)."""
        return self.client.dropped_up + self.client.dropped_down

    def close(self) -> None:
        self.client.close()

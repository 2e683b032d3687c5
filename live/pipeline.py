"""Capture, inference and output in their own threads, joined by bounded queues.

- capture thread: reads the camera; when it fails, reopens it with growing
  pauses while the output holds the last frame with a message;
- inference thread: frames, animates and composes (:class:`FrameProcessor`);
- main thread: output to the sinks, the preview window and its keys (GUI
  toolkits want the main thread).

Live, each queue holds one item and a new one replaces it (the newest frame
wins; stale ones are dropped and counted).  Offline (a video file rendered to
a file) the queues block instead, so that every frame is rendered in order.
Every thread reports its errors to the :class:`StatusBoard`; none dies of one.
"""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import cv2
import numpy as np
from tqdm import tqdm

from .capture import CameraError, FrameSource
from .hotkeys import Action, LiveState, apply, help_lines
from .hud import draw_lines, draw_message
from .processor import FrameProcessor, Processed
from .sinks import Sink
from .status import StatusBoard

END = object()  # marks the end of a finite stream in the queues


class LatestQueue:
    """Holds at most one item; ``put`` replaces what is there (counted in ``dropped``)."""

    def __init__(self):
        self._item: Any = None
        self._full = False
        self._condition = threading.Condition()
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._condition:
            if self._full and self._item is not END:
                self.dropped += 1
            if not (self._full and self._item is END):  # the end of the stream is never overwritten
                self._item, self._full = item, True
            self._condition.notify()

    def get(self, timeout: float) -> Any:
        """The newest item, or None if none came within ``timeout`` seconds."""
        with self._condition:
            if not self._full:
                self._condition.wait(timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item


class BlockingQueue:
    """A small FIFO whose ``put`` waits for room (offline rendering: no frame is dropped)."""

    def __init__(self, stop: threading.Event, size: int = 4):
        self._queue: queue.Queue = queue.Queue(size)
        self._stop = stop
        self.dropped = 0

    def put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, timeout: float) -> Any:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


@dataclass
class Captured:
    frame: np.ndarray
    read_ms: float


@dataclass
class Rendered:
    processed: Processed
    read_ms: float


@dataclass
class Statistics:
    """Exponentially averaged milliseconds per stage and output frames per second."""

    timings: dict[str, float] = field(default_factory=dict)
    fps: float = 0.0
    _last_output: float | None = None

    def add(self, timings: dict[str, float]) -> None:
        for name, value in timings.items():
            self.timings[name] = 0.9 * self.timings.get(name, value) + 0.1 * value

    def tick(self, now: float) -> None:
        if self._last_output is not None and now > self._last_output:
            rate = 1.0 / (now - self._last_output)
            self.fps = rate if self.fps == 0 else 0.9 * self.fps + 0.1 * rate
        self._last_output = now


class Pipeline:
    """Runs until the stream ends, ``max_frames`` outputs were sent, or the user quits.

    source, processor, sinks and preview are ready-made parts (tests pass
    their own).  preview: an object with ``show(frame)``, ``poll_keys(ms) ->
    list[int]`` and ``close()`` (see :class:`live.preview.PreviewWindow`), or None.  commands: extra actions, e.g.
    from global hotkeys, as a queue.Queue of :class:`Action`.
    """

    def __init__(self, source: FrameSource, processor: FrameProcessor, sinks: Iterable[Sink], status: StatusBoard,
                 state: LiveState, preview=None, offline: bool = False, max_frames: int | None = None,
                 commands: queue.Queue | None = None, key_action: Callable[[int], Action | None] | None = None,
                 reconnect_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)):
        self.source = source
        self.processor = processor
        self.sinks = list(sinks)
        self.status = status
        self.state = state
        self.preview = preview
        self.offline = offline
        self.max_frames = max_frames
        self.commands = commands or queue.Queue()
        self.key_action = key_action
        self.reconnect_delays = reconnect_delays
        self.stop = threading.Event()
        self.captured = BlockingQueue(self.stop) if offline else LatestQueue()
        self.rendered = BlockingQueue(self.stop) if offline else LatestQueue()
        self.requests: queue.Queue = queue.Queue()  # main -> inference: work the hotkeys asked for
        self.state_changes: queue.Queue = queue.Queue()  # inference -> main: state fields that work changed
        self.statistics = Statistics()
        self.frames_sent = 0
        self._last_action: dict[str, tuple[Action | None, float]] = {"window": (None, 0.0), "global": (None, 0.0)}

    # -- capture thread -------------------------------------------------------------------------------------
    def _capture(self) -> None:
        attempt = 0
        opened = False
        interval = 0.0
        next_time = time.monotonic()
        while not self.stop.is_set():
            try:
                if not opened:
                    self.source.open()
                    opened = True
                    if not (self.offline or self.source.realtime):  # a file standing in for a live camera
                        interval = 1.0 / (self.source.fps or 30.0)
                    if attempt:
                        self.status.clear("camera", f"{self.source.name} is back")
                    attempt = 0
                start = time.perf_counter()
                frame = self.source.read()
                read_ms = (time.perf_counter() - start) * 1e3
            except CameraError as error:
                self.source.close()
                opened = False
                delay = self.reconnect_delays[min(attempt, len(self.reconnect_delays) - 1)]
                attempt += 1
                self.status.set("camera", f"camera lost ({error}): reconnecting, attempt {attempt}, in {delay:g} s")
                self.stop.wait(delay)
                continue
            except Exception as error:  # an unexpected failure must not kill the thread silently
                self.status.set("camera", f"capture error: {error!r}")
                self.stop.wait(0.5)
                continue
            if frame is None:
                self.captured.put(END)
                break
            self.captured.put(Captured(frame, read_ms))
            if interval:  # ... plays at its own frame rate
                next_time += interval
                self.stop.wait(max(0.0, next_time - time.monotonic()))
        self.source.close()

    # -- inference thread -----------------------------------------------------------------------------------
    def _infer(self) -> None:
        while not self.stop.is_set():
            self._handle_requests()
            item = self.captured.get(timeout=0.1)
            if item is None:
                continue
            if item is END:
                self.rendered.put(END)
                return
            if self.state.paused:
                continue
            try:
                processed = self.processor.process(item.frame, self.state)
            except Exception as error:
                self.status.set("inference", f"inference error: {error}")
                continue
            self.status.clear("inference", "inference recovered")
            self.rendered.put(Rendered(processed, item.read_ms))

    def _handle_requests(self) -> None:
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return
            try:
                changes = self.processor.handle(request)
            except Exception as error:
                self.status.event(f"{request.name.lower()} failed: {error}")
                continue
            if changes:
                self.state_changes.put(changes)

    # -- main thread ------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run to the end; returns the process exit code (0: ended normally or by the user)."""
        threads = [threading.Thread(target=self._capture, name="capture", daemon=True),
                   threading.Thread(target=self._infer, name="inference", daemon=True)]
        for thread in threads:
            thread.start()
        progress = tqdm(total=self.max_frames or self.source.frame_count, unit="frame", disable=not self.offline,
                        desc="rendering")
        last: Rendered | None = None
        try:
            while not self.stop.is_set():
                item = self.rendered.get(timeout=1 / 30)
                if item is END:
                    break
                if item is not None:
                    last = item
                    self.statistics.add({"capture": item.read_ms, **item.processed.timings})
                if last is not None and (item is not None or not self.offline):
                    self._send(last, fresh=item is not None)
                    if item is not None:
                        progress.update(1)
                self._poll_keys()
                if self.max_frames is not None and self.frames_sent >= self.max_frames:
                    break
        except KeyboardInterrupt:
            self.status.event("interrupted: shutting down")
        finally:
            self._shutdown(threads)
            progress.close()
        return 0

    def _send(self, rendered: Rendered, fresh: bool) -> None:
        frame = rendered.processed.output
        if self.state.mirror:
            frame = frame[:, ::-1]
        frame = np.ascontiguousarray(frame)
        if self.status.has("camera"):  # the output holds the last frame, saying why
            frame = frame.copy()
            draw_message(frame, "camera lost: reconnecting...")
        start = time.perf_counter()
        for sink in list(self.sinks):
            try:
                sink.send(frame)
            except Exception as error:  # a failing sink never stops the others
                self.status.set(f"sink {sink.name}", f"{sink.name} failed and was closed: {error}")
                self.sinks.remove(sink)
                _close_quietly(sink)
        sink_ms = (time.perf_counter() - start) * 1e3
        if fresh:
            self.frames_sent += 1
            self.statistics.add({"sink": sink_ms})
            self.statistics.tick(time.monotonic())
        if self.preview is not None:
            self.preview.show(self._preview_frame(frame, rendered))

    def _preview_frame(self, frame: np.ndarray, rendered: Rendered) -> np.ndarray:
        view = frame.copy()
        inset = rendered.processed.inset
        side = min(view.shape[0] // 3, inset.shape[0])
        if side > 16:
            view[-side - 10:-10, 10:side + 10] = cv2.resize(inset, (side, side))
        state = self.state
        if state.hud:
            stats = self.statistics
            stages = "  ".join(f"{name} {ms:.0f}" for name, ms in stats.timings.items())
            draw_lines(view, [
                f"{stats.fps:5.1f} FPS   dropped {self.captured.dropped + self.rendered.dropped}",
                f"ms: {stages}",
                f"avatar {state.avatar_index + 1}/{state.avatar_count}  {'relative' if state.relative else 'absolute'}"
                f"  movement {state.movement:.1f}  smoothing {state.smoothing:.1f}  zoom {state.zoom:.2f}"
                + ("  PAUSED" if state.paused else "") + ("  PASSTHROUGH" if state.passthrough else "")
                + ("  SEARCHING POSE" if state.searching else ""),
                "h: help",
            ], (10, 10))
        if state.help:
            draw_lines(view, help_lines(), (view.shape[1] // 2 - 250, 10), scale=0.45)
        for index, message in enumerate(self.status.conditions()):
            draw_lines(view, [message], (10, view.shape[0] // 2 + 26 * index), colour=(255, 220, 80))
        return view

    def _poll_keys(self) -> None:
        while True:  # the main thread owns the state: changes made by the inference thread are merged here
            try:
                self.state = dataclasses.replace(self.state, **self.state_changes.get_nowait())
            except queue.Empty:
                break
        actions = []
        if self.preview is not None and self.key_action is not None:
            for key in self.preview.poll_keys(1):
                action = self.key_action(key)
                if action is not None:
                    actions.append(("window", action))
        while True:
            try:
                actions.append(("global", self.commands.get_nowait()))
            except queue.Empty:
                break
        now = time.monotonic()
        kept = []
        for origin, action in actions:
            # Ctrl+Alt+key pressed in the preview window reaches both listeners: act on it once.
            other_action, other_time = self._last_action["global" if origin == "window" else "window"]
            self._last_action[origin] = (action, now)
            if not (action == other_action and now - other_time < 0.3):
                kept.append(action)
        actions = kept
        for action in actions:
            self.state, requests = apply(self.state, action)
            self.status.event(f"key: {action.command.name.lower()}"
                              + (f" {action.argument}" if action.argument else ""))
            for request in requests:
                self.requests.put(request)
            if self.state.quit:
                self.stop.set()

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        self.stop.set()
        deadline = time.monotonic() + 1.0
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.status.event(f"{thread.name} thread still busy at exit (it is a daemon and ends with the process)")
        for sink in self.sinks:
            _close_quietly(sink)
        if self.preview is not None:
            self.preview.close()
        self.processor.close()


def _close_quietly(sink: Sink) -> None:
    try:
        sink.close()
    except Exception as error:  # closing must go on for the other sinks
        print(f"closing {sink.name} failed: {error}", file=sys.stderr)

"""Capture, inference and output in their own threads, joined by bounded queues.

- capture thread: reads the camera; when a webcam fails, reopens it with
  growing pauses while the output holds the last frame with a message (a
  video file that fails ends the run instead: it will not come back);
- inference thread: frames, animates and composes (:class:`FrameProcessor`),
  and owns the processor: only it closes it, so nothing is closed under a
  frame in progress;
- main thread: output to the sinks, the preview window and its keys (GUI
  toolkits want the main thread), and the signals that stop the run.

Live, each queue holds one item and a new one replaces it (the newest frame
wins; stale ones are dropped and counted).  Offline (a video file rendered to
a file) the queues block instead, so that every frame is rendered in order.
Every thread reports its errors to the :class:`StatusBoard` (one line on
screen, the traceback in the log file); none dies of one.  How the run ended
and what it delivered comes back as a :class:`~live.outcome.RunReport`.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import cv2
import numpy as np
from tqdm import tqdm

from .capture import CameraError, FrameSource
from .hotkeys import Action, LiveState, apply, help_lines, with_avatar_count
from .hud import draw_lines, draw_message
from .outcome import RunReport, StopReason
from .processor import FrameProcessor, Processed
from .signals import on_stop_signals
from .sinks import Sink
from .status import StatusBoard

log = logging.getLogger(__name__)

END = object()  # marks the end of a finite stream in the queues
HOLDING_MESSAGES = {  # conditions under which the output repeats its last frame, and what it says on it
    "camera": "camera lost: reconnecting...",
    "render": "render server lost: reconnecting...",
}


class LatestQueue:
    """Holds at most one item; ``put`` replaces what is there (counted in ``dropped``).

    ``end()`` marks the end of the stream: ``get`` returns the item still held, if any, then END.
    """

    def __init__(self):
        self._item: Any = None
        self._full = False
        self._ended = False
        self._condition = threading.Condition()
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._condition:
            if self._ended:
                return
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._condition.notify()

    def end(self) -> None:
        with self._condition:
            self._ended = True
            self._condition.notify()

    def get(self, timeout: float) -> Any:
        """The newest item, END once the stream has ended and nothing is left, or None if nothing came within
        ``timeout`` seconds."""
        with self._condition:
            if not (self._full or self._ended):
                self._condition.wait(timeout)
            if self._full:
                item, self._item, self._full = self._item, None, False
                return item
            return END if self._ended else None


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

    def end(self) -> None:
        self.put(END)

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
    """Runs until the stream ends, ``max_frames`` outputs were sent, the user quits, a signal arrives, or an output
    that is required fails.

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
        self.avatar_counts: queue.Queue = queue.Queue()  # inference -> main: the avatar folder was rescanned
        self.statistics = Statistics()
        self.frames_sent = 0
        self.frames_read = 0
        self.frames_failed = 0
        self.searching = False  # as the inference thread last reported it, for the HUD
        self._reason: StopReason | None = None
        self._detail = ""
        self._signal_number: int | None = None  # set by the signal handler, acted on by the main loop
        self._last_action: dict[str, tuple[Action | None, float]] = {"window": (None, 0.0), "global": (None, 0.0)}

    # -- how the run ends ----------------------------------------------------------------------------------------
    _SEVERITY = {StopReason.END_OF_STREAM: 0, StopReason.MAX_FRAMES: 0, StopReason.QUIT: 0, StopReason.SIGNAL: 1,
                 StopReason.CAMERA_FAILED: 2, StopReason.OUTPUT_FAILED: 2}

    def _end(self, reason: StopReason, detail: str = "") -> None:
        """Record why the run ends; a failure outranks a signal, which outranks an ordinary end."""
        if self._reason is None or self._SEVERITY[reason] > self._SEVERITY[self._reason]:
            self._reason, self._detail = reason, detail

    def _on_signal(self, number: int) -> None:
        # Runs in the main thread between two bytecodes, possibly while it holds a lock: only set a field here.
        self._signal_number = number

    def promised_in_advance(self) -> int | None:
        """How many frames an offline render will write, where that is known before it starts."""
        known = [n for n in (self.max_frames, self.source.frame_count) if n]
        return min(known) if known else None

    def report(self) -> RunReport:
        promised = None
        if self.offline:  # a stream of unknown length promised every frame it held
            promised = self.promised_in_advance() or self.frames_read + self.source.unreadable
        return RunReport(offline=self.offline, promised=promised, written=self.frames_sent,
                         unreadable=self.source.unreadable, failed=self.frames_failed,
                         dropped=self.captured.dropped + self.rendered.dropped,
                         reason=self._reason or StopReason.END_OF_STREAM, detail=self._detail,
                         signal_number=self._signal_number)

    # -- capture thread -------------------------------------------------------------------------------------
    def _capture(self) -> None:
        try:
            self._capture_frames()
        finally:
            self.source.close()
            self.captured.end()

    def _capture_frames(self) -> None:
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
                if not self.source.realtime:  # a file does not come back: the stream ends here, with the reason
                    self.status.event(f"{self.source.name}: {error}")
                    self._end(StopReason.CAMERA_FAILED, str(error))
                    return
                self.source.close()
                opened = False
                delay = self.reconnect_delays[min(attempt, len(self.reconnect_delays) - 1)]
                attempt += 1
                self.status.set("camera", f"camera lost ({error}): reconnecting, attempt {attempt}, in {delay:g} s")
                self.stop.wait(delay)
                continue
            except Exception as error:  # an unexpected failure must not kill the thread silently
                self.status.failure("camera", "capture error", error)
                self.stop.wait(0.5)
                continue
            if frame is None:
                return
            self.frames_read += 1
            self.captured.put(Captured(frame, read_ms))
            if interval:  # ... plays at its own frame rate
                next_time += interval
                self.stop.wait(max(0.0, next_time - time.monotonic()))

    # -- inference thread -----------------------------------------------------------------------------------
    def _infer(self) -> None:
        try:
            self._infer_frames()
        finally:
            self.rendered.end()
            self.processor.close()

    def _infer_frames(self) -> None:
        while not self.stop.is_set():
            self._handle_requests()
            item = self.captured.get(timeout=0.1)
            if item is None:
                continue
            if item is END:
                return
            if self.state.paused:
                continue
            try:
                processed = self.processor.process(item.frame, self.state)
            except Exception as error:
                self.frames_failed += 1
                self.status.failure("inference", "inference error", error)
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
                avatar_count = self.processor.handle(request)
            except Exception as error:
                self.status.failure(f"request {request.name}", f"{request.name.lower()} failed", error, standing=False)
                continue
            if avatar_count is not None:
                self.avatar_counts.put(avatar_count)

    # -- main thread ------------------------------------------------------------------------------------------
    def run(self) -> RunReport:
        """Run to the end; returns how it ended and what it delivered (``.exit_code()`` is the process's status)."""
        threads = [threading.Thread(target=self._capture, name="capture", daemon=True),
                   threading.Thread(target=self._infer, name="inference", daemon=True)]
        progress = tqdm(total=self.promised_in_advance(), unit="frame",
                        disable=not self.offline, desc="rendering")
        with on_stop_signals(self._on_signal):
            for thread in threads:
                thread.start()
            try:
                self._output_loop(progress)
            finally:
                self._shutdown(threads)
                progress.close()
        return self.report()

    def _output_loop(self, progress: tqdm) -> None:
        last: Rendered | None = None
        while True:
            if self._signal_number is not None:
                self.status.event(f"{_signal_name(self._signal_number)} received: finishing the outputs")
                self._end(StopReason.SIGNAL)
                return
            item = self.rendered.get(timeout=1 / 30)
            if item is END:
                self._end(StopReason.END_OF_STREAM)
                return
            if item is not None:
                last = item
                self.searching = item.processed.searching
                self.statistics.add({"capture": item.read_ms, **item.processed.timings})
            if last is not None and (item is not None or not self.offline):
                if self._send(last, fresh=item is not None):
                    progress.update(1)
            if self._reason is StopReason.OUTPUT_FAILED:
                return
            self._poll_keys()
            if self.state.quit:
                self._end(StopReason.QUIT)
                return
            if self.max_frames is not None and self.frames_sent >= self.max_frames:
                self._end(StopReason.MAX_FRAMES)
                return

    def _send(self, rendered: Rendered, fresh: bool) -> bool:
        """Send a frame to every sink; returns whether a fresh frame reached every required one (it is written)."""
        frame = rendered.processed.output
        if self.state.mirror:
            frame = frame[:, ::-1]
        frame = np.ascontiguousarray(frame)
        holding = [message for key, message in HOLDING_MESSAGES.items() if self.status.has(key)]
        if holding:  # the output holds the last frame, saying why
            frame = frame.copy()
            draw_message(frame, holding[0])
        start = time.perf_counter()
        delivered = True
        for sink in list(self.sinks):
            try:
                sink.send(frame)
            except Exception as error:
                delivered = delivered and not sink.required
                self._drop_sink(sink, error)
        if not self.sinks and self.preview is None and self._reason is None:
            self._end(StopReason.OUTPUT_FAILED, "no output is left")
        sink_ms = (time.perf_counter() - start) * 1e3
        if fresh and delivered:
            self.frames_sent += 1
            self.statistics.add({"sink": sink_ms})
            self.statistics.tick(time.monotonic())
        if self.preview is not None:
            self.preview.show(self._preview_frame(frame, rendered))
        return fresh and delivered

    def _drop_sink(self, sink: Sink, error: Exception) -> None:
        """Take a failed sink out of the run: a required one (the video file) stops the run, others are let go."""
        self.sinks.remove(sink)
        if sink.required:
            self.status.failure(f"sink {sink.name}", f"{sink.name} failed; stopping", error)
            self._end(StopReason.OUTPUT_FAILED, f"{sink.name} failed: {error}")
        else:
            self.status.failure(f"sink {sink.name}", f"{sink.name} failed and was closed", error)
        self._close_sink(sink)

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
                f"{stats.fps:5.1f} FPS   dropped {self.captured.dropped + self.rendered.dropped + rendered.processed.render_dropped}",
                f"ms: {stages}",
                f"avatar {state.avatar_index + 1}/{state.avatar_count}  {'relative' if state.relative else 'absolute'}"
                f"  movement {state.movement:.1f}  smoothing {state.smoothing:.1f}  zoom {state.zoom:.2f}"
                + ("  PAUSED" if state.paused else "") + ("  PASSTHROUGH" if state.passthrough else "")
                + ("  SEARCHING POSE" if self.searching else ""),
                "h: help",
            ], (10, 10))
        if state.help:
            draw_lines(view, help_lines(), (view.shape[1] // 2 - 250, 10), scale=0.45)
        for index, message in enumerate(self.status.conditions()):
            draw_lines(view, [message], (10, view.shape[0] // 2 + 26 * index), colour=(255, 220, 80))
        return view

    def _poll_keys(self) -> None:
        while True:  # the main thread owns the state: what the inference thread learnt is merged here
            try:
                self.state = with_avatar_count(self.state, self.avatar_counts.get_nowait())
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

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        """Stop the threads, then finish every sink (a video file is finalised here) and close the preview.

        The inference thread closes the processor itself when it leaves its
        loop; if it is still inside a slow frame after the grace period, it
        does so when that frame is done (it is a daemon, so it never holds up
        the exit).
        """
        self.stop.set()
        deadline = time.monotonic() + 1.0
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.debug("%s thread still busy at exit", thread.name)
        for sink in list(self.sinks):
            self._close_sink(sink)
        self.sinks.clear()
        if self.preview is not None:
            self.preview.close()

    def _close_sink(self, sink: Sink) -> None:
        try:
            sink.close()
        except Exception as error:  # closing must go on for the other sinks
            self.status.failure(f"sink {sink.name}", f"closing {sink.name} failed", error, standing=False)
            if sink.required:
                self._end(StopReason.OUTPUT_FAILED, f"closing {sink.name} failed: {error}")


def _signal_name(number: int) -> str:
    return signal.Signals(number).name

"""The threaded pipeline: newest-frame queues, camera loss and reconnection, clean shutdown.

The pipeline takes ready-made parts; here the camera is a scripted source
(a webcam cannot be unplugged in CI) and the processor a light one, so that
the tests exercise the threads, queues and reconnection logic themselves.
"""

from __future__ import annotations

import io
import queue
import threading
import time

import numpy as np

from live.capture import CameraError
from live.hotkeys import Action, Command, LiveState
from live.outcome import StopReason
from live.pipeline import END, LatestQueue, Pipeline
from live.processor import Processed
from live.status import StatusBoard


def test_latest_queue_keeps_the_newest_and_counts_drops():
    latest = LatestQueue()
    for item in range(5):
        latest.put(item)
    assert latest.get(timeout=0.01) == 4 and latest.dropped == 4
    assert latest.get(timeout=0.01) is None
    latest.put(5)
    latest.end()
    latest.put(7)  # nothing comes after the end of the stream
    # ... and the end never overwrites the last item: it comes after it.
    assert latest.get(timeout=0.01) == 5 and latest.get(timeout=0.01) is END and latest.get(timeout=0.01) is END


class ScriptedCamera:
    """A live camera whose reads follow a script: frames, 'fail' (the device vanishes) or 'end'."""

    name = "scripted camera"
    fps = 100.0
    frame_count = None
    realtime = True
    unreadable = 0

    def __init__(self, script: list):
        self.script = list(script)
        self.opens = 0
        self.failed_opens = 0

    def open(self) -> None:
        if self.script and self.script[0] == "unplugged":
            self.script.pop(0)
            self.failed_opens += 1
            raise CameraError("device not found")
        self.opens += 1

    def read(self):
        time.sleep(0.01)
        step = self.script.pop(0) if self.script else "end"
        if step == "fail":
            raise CameraError("stopped delivering frames")
        if step == "end":
            return None
        return np.full((48, 64, 3), step, np.uint8)

    def close(self) -> None:
        pass


class TaggingProcessor:
    """Output = the camera frame's value, so each output says which frame it came from."""

    def __init__(self):
        self.closed = False

    def process(self, frame, state):
        output = np.full((32, 32, 3), frame[0, 0, 0], np.uint8)
        return Processed(output, output, {"animate": 1.0})

    def handle(self, request):
        return {}

    def close(self):
        self.closed = True


class CollectingSink:
    name = "collector"
    required = False

    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.closed = 0

    def send(self, frame):
        self.frames.append(frame.copy())

    def close(self):
        self.closed += 1


def make_pipeline(camera, sink, **options) -> tuple[Pipeline, io.StringIO]:
    log = io.StringIO()
    pipeline = Pipeline(camera, TaggingProcessor(), [sink], StatusBoard(log=log), LiveState(),
                        reconnect_delays=(0.05, 0.1), **options)
    return pipeline, log


def test_camera_lost_mid_run_is_reopened_while_the_output_holds_the_last_frame():
    script = [10, 20, 30, "fail", "unplugged", "unplugged", 40, 50, "end"]
    camera, sink = ScriptedCamera(script), CollectingSink()
    pipeline, log = make_pipeline(camera, sink)
    assert pipeline.run().exit_code() == 0
    messages = log.getvalue()
    assert "camera lost (stopped delivering frames): reconnecting, attempt 1, in 0.05 s" in messages
    assert "camera lost (device not found): reconnecting, attempt 3, in 0.1 s" in messages
    assert "scripted camera is back" in messages
    assert camera.failed_opens == 2 and camera.opens == 2
    values = [int(np.median(frame)) for frame in sink.frames]
    assert 50 in values, "frames after the reconnection reached the output"
    held = [frame for frame in sink.frames if np.median(frame) == 30]
    # While the camera was gone the last frame was sent again, with the message drawn on it.
    assert any(frame.std() > 0 for frame in held)
    assert sink.closed == 1


def test_quit_stops_every_thread_within_a_second():
    camera = ScriptedCamera(list(range(1, 250)) * 10)  # endless for this test's purposes
    sink = CollectingSink()
    commands: queue.Queue = queue.Queue()
    pipeline, log = make_pipeline(camera, sink, commands=commands)
    threading.Timer(0.5, lambda: commands.put(Action(Command.QUIT))).start()
    started = time.monotonic()
    assert pipeline.run().exit_code() == 0
    assert time.monotonic() - started < 0.5 + 1.0
    assert not [t for t in threading.enumerate() if t.name in ("capture", "inference") and t.is_alive()]
    assert pipeline.processor.closed and sink.closed == 1
    assert "key: quit" in log.getvalue()


def test_a_failing_sink_is_closed_and_the_others_keep_going():
    class BrokenSink(CollectingSink):
        name = "broken"

        def send(self, frame):
            raise OSError("device gone")

    camera, good, broken = ScriptedCamera([1, 2, 3, 4, "end"]), CollectingSink(), BrokenSink()
    log = io.StringIO()
    pipeline = Pipeline(camera, TaggingProcessor(), [broken, good], StatusBoard(log=log), LiveState(), offline=True)
    assert pipeline.run().exit_code() == 0
    assert [int(f[0, 0, 0]) for f in good.frames] == [1, 2, 3, 4]
    assert "broken failed and was closed: OSError: device gone" in log.getvalue() and broken.closed == 1


def test_offline_mode_keeps_every_frame_in_order():
    camera = ScriptedCamera(list(range(1, 41)) + ["end"])
    camera.realtime = False
    sink = CollectingSink()
    pipeline, _ = make_pipeline(camera, sink, offline=True)
    assert pipeline.run().exit_code() == 0
    assert [int(f[0, 0, 0]) for f in sink.frames] == list(range(1, 41))


class FileCamera(ScriptedCamera):
    """A video file: not live, of known length; 'fail' is damage that ends it (a file does not come back)."""

    realtime = False

    def __init__(self, script: list):
        super().__init__(script)
        self.frame_count = sum(1 for step in script if isinstance(step, int))


def test_a_required_sink_that_fails_stops_the_run_and_the_exit_status_says_so():
    class FullDisk(CollectingSink):
        name = "video file out.mp4"
        required = True

        def send(self, frame):
            if len(self.frames) == 3:
                raise OSError(28, "No space left on device")
            super().send(frame)

    camera, disk = FileCamera(list(range(1, 21)) + ["end"]), FullDisk()
    pipeline, log = make_pipeline(camera, disk, offline=True)
    report = pipeline.run()
    assert report.reason is StopReason.OUTPUT_FAILED and report.exit_code() == 1
    assert report.written == 3 and [int(f[0, 0, 0]) for f in disk.frames] == [1, 2, 3]
    assert disk.closed == 1, "the failed file is still finalised, so what was written stays playable"
    assert "No space left on device" in log.getvalue() and "stopped" in report.summary()


def test_an_offline_render_whose_every_frame_fails_exits_non_zero_and_says_how_many():
    class Failing(TaggingProcessor):
        def process(self, frame, state):
            raise RuntimeError("out of memory")

    camera, sink = FileCamera([1, 2, 3, 4, "end"]), CollectingSink()
    log = io.StringIO()
    pipeline = Pipeline(camera, Failing(), [sink], StatusBoard(log=log), LiveState(), offline=True)
    report = pipeline.run()
    assert report.exit_code() == 1 and report.written == 0 and report.failed == 4 and report.promised == 4
    assert "0 of 4 frames written" in report.summary() and "4 frames failed in inference" in report.summary()
    assert "inference error: RuntimeError: out of memory" in log.getvalue()


def test_a_damaged_video_file_ends_the_run_with_its_reason_and_is_not_reopened():
    camera, sink = FileCamera([1, 2, "fail", 3]), CollectingSink()
    pipeline, log = make_pipeline(camera, sink, offline=True)
    report = pipeline.run()
    assert camera.opens == 1, "a file is not a webcam: it is not retried"
    assert report.reason is StopReason.CAMERA_FAILED and report.exit_code() == 1
    assert [int(f[0, 0, 0]) for f in sink.frames] == [1, 2], "the frames before the damage were still written"
    assert "reconnecting" not in log.getvalue()


def test_a_live_run_whose_only_output_failed_stops_instead_of_rendering_to_nowhere():
    class Gone(CollectingSink):
        name = "virtual camera"

        def send(self, frame):
            raise RuntimeError("device removed")

    camera = ScriptedCamera(list(range(1, 250)) * 10)
    pipeline, _ = make_pipeline(camera, Gone())
    report = pipeline.run()
    assert report.reason is StopReason.OUTPUT_FAILED and report.exit_code() == 1
    assert camera.script, "the run stopped long before the camera ran out"


def test_the_processor_is_closed_after_its_last_frame_not_during_it():
    events = []

    class Slow(TaggingProcessor):
        def process(self, frame, state):
            events.append("process start")
            time.sleep(1.5)  # longer than the pipeline's one-second grace period at shutdown
            events.append("process end")
            return super().process(frame, state)

        def close(self):
            events.append("close")
            super().close()

    camera, sink = ScriptedCamera(list(range(1, 250))), CollectingSink()
    commands: queue.Queue = queue.Queue()
    log = io.StringIO()
    pipeline = Pipeline(camera, Slow(), [sink], StatusBoard(log=log), LiveState(), commands=commands)
    threading.Timer(0.3, lambda: commands.put(Action(Command.QUIT))).start()
    assert pipeline.run().reason is StopReason.QUIT
    deadline = time.monotonic() + 5
    while "close" not in events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events[-2:] == ["process end", "close"], events


def test_the_last_frame_before_the_end_of_a_live_stream_is_sent():
    camera, sink = ScriptedCamera([1, 2, 3, "end"]), CollectingSink()
    pipeline, _ = make_pipeline(camera, sink)
    report = pipeline.run()
    assert report.reason is StopReason.END_OF_STREAM and report.exit_code() == 0
    assert int(sink.frames[-1][0, 0, 0]) == 3

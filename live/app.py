"""Wiring of the live tool: checks the options, builds every part, runs the pipeline, says how it ended.

Everything that needs no model is checked first (avatar, camera, output
path, that the frames go somewhere), so a mistake costs seconds, not a model
load.  A signal during start-up ends the run there, with nothing left
behind; once the pipeline runs, it finalises the outputs (see
:mod:`live.signals`).  The exit status comes from the run's
:class:`~live.outcome.RunReport`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import queue
import sys
from dataclasses import dataclass
from pathlib import Path

from engine import EngineError, load_model
from engine.config import ModelConfig

from .avatars import AvatarError, AvatarLibrary
from .capture import CameraError, FrameSource, open_camera
from .global_hotkeys import start_global_hotkeys
from .hotkeys import LiveState, action_for_key
from .pipeline import Pipeline
from .preflight import PreflightError, check_output_path, check_some_output, model_and_checkpoint
from .preview import PreviewWindow
from .processor import FrameProcessor
from .signals import StopRequested, on_stop_signals, raise_stop
from .remote.client import RemoteError, RemoteRenderer
from .remote.protocol import keypoint_detector_fingerprint
from .remote.tokens import TokenError, client_token
from .sinks import Sink, SinkError, VirtualCamera
from .stages.remote_render import RemoteRender
from .status import StatusBoard
from .video_file import VideoFile

log = logging.getLogger(__name__)
USER_ERRORS = (EngineError, AvatarError, CameraError, SinkError, PreflightError, RemoteError, TokenError)


@dataclass
class Checked:
    """What the options name, verified without loading the model."""

    library: AvatarLibrary
    source: FrameSource
    output: Path | None
    config: ModelConfig
    checkpoint: Path
    size: tuple[int, int]  # (width, height) of the output frames
    offline: bool


def run_live(args: argparse.Namespace, log_file: Path | None = None) -> int:
    """Run the live tool (or the offline render) as ``args`` say; returns the exit code."""
    status = StatusBoard(log_file=log_file)
    with contextlib.ExitStack() as cleanup:
        try:
            with on_stop_signals(raise_stop):
                pipeline = _start(args, status, cleanup)
        except StopRequested as stop:
            status.event(f"{stop} during start-up: stopped before any frame was rendered")
            return 128 + stop.signal_number
        except USER_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            # The whole story for the log file: a library's report, squeezed to one line in the message, is the cause.
            log.debug("start-up failed", exc_info=error)
            return 1
        cleanup.pop_all()  # from here on the pipeline closes what was opened
    listener = start_global_hotkeys(pipeline.commands, status) if args.global_hotkeys else None
    try:
        report = pipeline.run()
    finally:
        if listener is not None:
            listener.stop()
    status.event(report.summary())
    return report.exit_code()


def check_options(args: argparse.Namespace) -> Checked:
    """Everything the options name that can be checked without the model; raises one of USER_ERRORS."""
    if not args.source:
        raise AvatarError("no avatar: pass --source IMAGE or --source FOLDER")
    library = AvatarLibrary(args.source)
    library.check_first()
    output = check_output_path(args.output, args.camera) if args.output else None
    source = open_camera(args.camera)
    config, checkpoint = model_and_checkpoint(args.config, args.checkpoint)
    height, width = config.frame_size
    size = args.output_size or ((width, height) if args.square else (1280, 720))
    return Checked(library, source, output, config, checkpoint, size, offline=not source.realtime and args.no_preview)


def _start(args: argparse.Namespace, status: StatusBoard, cleanup: contextlib.ExitStack) -> Pipeline:
    checked = check_options(args)
    width, height = checked.size
    sinks: list[Sink] = []
    wants_virtual_camera = not checked.offline if args.virtual_camera is None else args.virtual_camera
    why_no_virtual_camera = ""
    if wants_virtual_camera:
        try:
            camera = VirtualCamera(width, height, args.fps)
        except SinkError as error:
            why_no_virtual_camera = str(error)
            status.set("virtual camera", why_no_virtual_camera)
        else:
            cleanup.callback(camera.close)
            sinks.append(camera)
            status.event(f"streaming to {camera.name}")
    check_some_output(not args.no_preview, args.output, bool(sinks), why_no_virtual_camera)
    preview = None
    if not args.no_preview:
        preview = PreviewWindow()
        cleanup.callback(preview.close)

    status.event(f"loading {checked.config.name} from {checked.checkpoint} (backend {args.backend})")
    # A remote run renders on the server: only the keypoint detector is loaded and built here.
    model = load_model(checked.config, checked.checkpoint, device=args.device, backend=args.backend,
                       precision=args.precision, keypoints_only=bool(args.remote))
    status.event(model.describe())
    render = _connect(args, model, status, checked.offline) if args.remote else None
    if render is not None:
        cleanup.callback(render.close)
    processor = FrameProcessor(model, checked.library, status, (width, height), square=args.square,
                               adapt_scale=args.adapt_scale, render=render)
    cleanup.callback(processor.close)
    if checked.output is not None:
        source = checked.source
        video = VideoFile(checked.output, width, height, fps=source.fps or 30.0,
                          audio_from=str(args.camera) if not source.realtime else None)
        cleanup.callback(video.close)
        sinks.append(video)
        status.event(f"writing {video.codec} to {checked.output}")
    state = LiveState(avatar_count=len(checked.library), relative=args.relative, movement=args.movement,
                      smoothing=args.smoothing)
    return Pipeline(checked.source, processor, sinks, status, state, preview=preview, offline=checked.offline,
                    max_frames=args.max_frames, commands=queue.Queue(), key_action=action_for_key)


def _connect(args: argparse.Namespace, model, status: StatusBoard, offline: bool) -> RemoteRender:
    """The render stage on the server ``--remote`` names: connected, or RemoteError / TokenError saying why not."""
    client = RemoteRenderer(args.remote, client_token(args.token_file), fingerprint=args.fingerprint,
                            model_fingerprint=keypoint_detector_fingerprint(model))
    client.start()
    status.event(f"rendering on {args.remote}: only the avatar and keypoints leave this machine")
    return RemoteRender(client, model, status, in_order=offline)

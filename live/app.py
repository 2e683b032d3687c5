"""Wiring of the live tool: builds every part from the command line and runs the pipeline."""

from __future__ import annotations

import argparse
import queue
import sys

from engine import EngineError, load_model
from engine.weights import find_checkpoint

from .avatars import AvatarError, AvatarLibrary
from .capture import CameraError, OpenCVSource, parse_camera
from .global_hotkeys import start_global_hotkeys
from .hotkeys import LiveState, action_for_key
from .pipeline import Pipeline
from .preview import PreviewWindow
from .processor import FrameProcessor
from .sinks import SinkError, VideoFile, VirtualCamera
from .status import StatusBoard


def run_live(args: argparse.Namespace) -> int:
    """Run the live tool (or the offline render) as ``args`` say; returns the exit code."""
    status = StatusBoard()
    try:
        checkpoint = find_checkpoint(args.checkpoint)
        if not args.source:
            raise AvatarError("no avatar: pass --source IMAGE or --source FOLDER")
        library = AvatarLibrary(args.source)
        source = OpenCVSource(parse_camera(args.camera))
        preview = None if args.no_preview else PreviewWindow()
        model = load_model(args.config, checkpoint, device=args.device, backend=args.backend, precision=args.precision)
        status.event(model.describe())
        width, height = args.output_size or ((model.frame_size[1], model.frame_size[0]) if args.square else (1280, 720))
        processor = FrameProcessor(model, library, status, (width, height), square=args.square,
                                   adapt_scale=args.adapt_scale)
    except (EngineError, AvatarError, CameraError, SinkError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    offline = source.is_file and args.no_preview
    sinks = []
    if args.output:
        sinks.append(VideoFile(args.output, width, height, fps=_file_fps(source),
                               audio_from=str(args.camera) if source.is_file else None))
    use_virtual_camera = not offline if args.virtual_camera is None else args.virtual_camera
    if use_virtual_camera:
        try:
            sinks.append(VirtualCamera(width, height, args.fps))
            status.event(f"streaming to {sinks[-1].name}")
        except SinkError as error:
            status.set("virtual camera", str(error))
    commands: queue.Queue = queue.Queue()
    listener = start_global_hotkeys(commands, status) if args.global_hotkeys else None
    state = LiveState(avatar_count=len(library), relative=args.relative, movement=args.movement,
                      smoothing=args.smoothing)
    pipeline = Pipeline(source, processor, sinks, status, state, preview=preview, offline=offline,
                        max_frames=args.max_frames, commands=commands, key_action=action_for_key)
    try:
        return pipeline.run()
    finally:
        if listener is not None:
            listener.stop()
        status.event(f"done: {pipeline.frames_sent} frames sent")


def _file_fps(source: OpenCVSource) -> float:
    """The output file's frame rate: the driving video's, or 30 for a webcam."""
    if source.is_file:
        source.open()
        source.close()
    return source.fps or 30.0

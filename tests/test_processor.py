"""The inference stage's own state: the pose search it runs and the avatar folder it rescans."""

from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np

from live.avatars import AvatarLibrary
from live.hotkeys import LiveState, Request
from live.processor import FrameProcessor
from live.status import StatusBoard

from .live_media import driving_frames, write_avatar


def make_processor(small_model, folder) -> tuple[FrameProcessor, io.StringIO]:
    log = io.StringIO()
    return FrameProcessor(small_model, AvatarLibrary(folder), StatusBoard(log=log), (320, 180)), log


def test_searching_is_reported_only_while_a_search_really_runs(tmp_path, small_model):
    faceless = np.full((400, 300, 3), 120, np.uint8)
    cv2.imwrite(str(tmp_path / "1-faceless.png"), faceless)
    write_avatar(tmp_path / "2-face.png")
    processor, log = make_processor(small_model, tmp_path)
    frame, state = driving_frames(1)[0], LiveState(avatar_count=2)
    try:
        processor.handle(Request.TOGGLE_SEARCH)  # the avatar has no face: no search can start
        assert not processor.process(frame, state).searching
        assert "no face landmarks in the avatar" in log.getvalue()

        with_face = dataclasses.replace(state, avatar_index=1)
        processor.process(frame, with_face)
        processor.handle(Request.TOGGLE_SEARCH)
        assert processor.process(frame, with_face).searching
        processor.handle(Request.TOGGLE_SEARCH)  # the second press finishes it
        assert not processor.process(frame, with_face).searching
        assert "calibrated on the best-matching pose" in log.getvalue()
    finally:
        processor.close()


def test_a_folder_that_shrank_never_breaks_the_frames_of_a_stale_selection(tmp_path, small_model):
    for name in ("1.png", "2.png", "3.png"):
        write_avatar(tmp_path / name)
    processor, _ = make_processor(small_model, tmp_path)
    frame = driving_frames(1)[0]
    stale = LiveState(avatar_index=2, avatar_count=3)
    try:
        assert processor.process(frame, stale).output.shape == (180, 320, 3)
        (tmp_path / "2.png").unlink()
        (tmp_path / "3.png").unlink()
        assert processor.handle(Request.RELOAD_AVATARS) == 1
        # The main thread has not merged the new count yet: the frame still renders, from the last avatar left.
        assert processor.process(frame, stale).output.shape == (180, 320, 3)
        assert processor.avatar.name == "1.png"
    finally:
        processor.close()

"""The inference stage's own state: the pose search it runs and the avatar folder it rescans."""

from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np

from live.avatars import AvatarLibrary
from live.hotkeys import LiveState, Request
from live.processor import FrameProcessor
from live.stages.render import LocalRender
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


def test_reloading_reads_the_shown_avatar_again(tmp_path, small_model):
    write_avatar(tmp_path / "1.png")
    processor, _ = make_processor(small_model, tmp_path)
    state = LiveState(avatar_count=1)
    try:
        first = processor.avatar.photo
        write_avatar(tmp_path / "1.png", size=(600, 900))  # the user edits the picture, then presses R
        assert processor.handle(Request.RELOAD_AVATARS) == 1
        assert processor.avatar.photo.shape == (600, 900, 3) != first.shape
        assert processor.process(driving_frames(1)[0], state).output.shape == (180, 320, 3)
    finally:
        processor.close()


class FirstAvatarOnly(LocalRender):
    """Renders the first avatar; for a later one no frame is ready yet (a render server that has not answered)."""

    def __init__(self, model):
        super().__init__(model)
        self.avatars = 0

    def set_avatar(self, crop):
        self.avatars += 1
        return super().set_avatar(crop)

    def render(self, keypoints):
        return super().render(keypoints) if self.avatars == 1 else None


def test_after_a_switch_the_old_face_is_never_pasted_onto_the_new_avatar(tmp_path, small_model):
    write_avatar(tmp_path / "1.png")
    write_avatar(tmp_path / "2.png", size=(600, 900))
    processor = FrameProcessor(small_model, AvatarLibrary(tmp_path), StatusBoard(log=io.StringIO()), (320, 180),
                               render=FirstAvatarOnly(small_model))
    frame = driving_frames(1)[0]
    try:
        processor.process(frame, LiveState(avatar_count=2))
        output = processor.process(frame, LiveState(avatar_index=1, avatar_count=2)).output
        # Until its first frame comes, the new avatar is shown as it is.
        assert np.array_equal(output, processor.composer.output(processor.avatar.framed.crop))
    finally:
        processor.close()


def test_a_face_missed_for_a_moment_is_not_reported_and_a_face_gone_for_longer_is(tmp_path, small_model):
    write_avatar(tmp_path / "avatar.png")
    clock = [0.0]
    log = io.StringIO()
    processor = FrameProcessor(small_model, AvatarLibrary(tmp_path), StatusBoard(log=log), (320, 180),
                               clock=lambda: clock[0])
    face, state = driving_frames(1)[0], LiveState()
    empty = np.full_like(face, 90)
    try:
        # Before any face: the crop sits at the centre, said at once.
        processor.process(empty, state)
        assert "no face in view: using the centre of the camera image" in log.getvalue()
        processor.process(face, state)
        assert "face found again" in log.getvalue()
        # A detector that misses every other frame for a second: the crop holds, nothing is said.
        said = log.getvalue()
        for step in range(1, 31):
            clock[0] = step / 30
            processor.process(empty if step % 2 else face, state)
        assert log.getvalue() == said
        # Gone for longer: said once, then once when it is back.
        for step in range(31, 45):
            clock[0] = step / 30
            processor.process(empty, state)
        assert log.getvalue().count("no face in view: the crop stays where the face was last seen") == 1
        clock[0] = 45 / 30
        processor.process(face, state)
        assert log.getvalue().count("face found again") == 2
    finally:
        processor.close()

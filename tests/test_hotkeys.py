"""Hotkeys: the table and the pure state transitions, tested without a window."""

from __future__ import annotations

import dataclasses

import pytest

from live.hotkeys import (BINDINGS, KEYMAP, Action, Command, LiveState, Request, action_for_key, apply, help_lines,
                          with_avatar_count)


def test_every_command_has_a_key_and_no_key_is_bound_twice():
    bound = {binding.action.command for binding in BINDINGS}
    assert bound == set(Command)
    keys = [key for binding in BINDINGS for key in binding.keys]
    assert len(keys) == len(set(keys))


def test_key_codes_map_case_insensitively():
    assert action_for_key(ord("x")) == Action(Command.RECALIBRATE)
    assert action_for_key(ord("X")) == Action(Command.RECALIBRATE)
    assert action_for_key(27) == Action(Command.QUIT)
    assert action_for_key(ord("3")) == Action(Command.SELECT_AVATAR, 3)
    assert action_for_key(-1) is None
    assert action_for_key(ord("`")) is None


def test_help_lists_every_binding():
    text = "\n".join(help_lines())
    for binding in BINDINGS:
        if binding.action.command is not Command.SELECT_AVATAR:
            assert binding.help in text
    assert "1-9" in text and "esc" in text and "space" in text


def press(state: LiveState, command: Command, argument: int = 0):
    return apply(state, Action(command, argument))


def test_recalibrate_and_search_make_requests():
    state = LiveState()
    assert press(state, Command.RECALIBRATE) == (state, (Request.CALIBRATE,))
    # Whether F starts or finishes a search is decided where the search runs, not guessed here.
    assert press(state, Command.FIND_REFERENCE) == (state, (Request.TOGGLE_SEARCH,))
    assert press(state, Command.RELOAD_AVATARS) == (state, (Request.RELOAD_AVATARS,))


def test_a_rescanned_folder_keeps_the_selection_made_meanwhile():
    chosen_while_rescanning = press(LiveState(avatar_count=3), Command.NEXT_AVATAR)[0]
    assert with_avatar_count(chosen_while_rescanning, 4) == LiveState(avatar_index=1, avatar_count=4)
    # A selection past the end of a shrunken folder moves to its last avatar, never out of range.
    assert with_avatar_count(LiveState(avatar_index=2, avatar_count=3), 1).avatar_index == 0


def test_avatar_selection_wraps_and_ignores_missing_numbers():
    state = LiveState(avatar_count=3)
    assert press(state, Command.SELECT_AVATAR, 3)[0].avatar_index == 2
    assert press(state, Command.SELECT_AVATAR, 4)[0] == state
    assert press(state, Command.PREVIOUS_AVATAR)[0].avatar_index == 2
    assert press(dataclasses.replace(state, avatar_index=2), Command.NEXT_AVATAR)[0].avatar_index == 0


@pytest.mark.parametrize("command, field, expected", [
    (Command.PASSTHROUGH, "passthrough", True), (Command.MIRROR, "mirror", True), (Command.HUD, "hud", False),
    (Command.HELP, "help", True), (Command.RELATIVE, "relative", False), (Command.PAUSE, "paused", True),
    (Command.QUIT, "quit", True),
])
def test_toggles(command, field, expected):
    state, requests = press(LiveState(), command)
    assert getattr(state, field) is expected and requests == ()
    assert getattr(press(state, command)[0], field) is (not expected)


def test_crop_zoom_and_move_are_bounded():
    state = LiveState()
    for _ in range(50):
        state = press(state, Command.ZOOM_IN)[0]
        state = press(state, Command.MOVE_RIGHT)[0]
        state = press(state, Command.MOVE_UP)[0]
    assert state.zoom == 4.0 and state.offset == (0.5, -0.5)
    assert press(LiveState(), Command.ZOOM_OUT)[0].zoom == pytest.approx(1 / 1.1)
    assert press(LiveState(), Command.MOVE_LEFT)[0].offset == (-0.03, 0.0)
    assert press(LiveState(), Command.MOVE_DOWN)[0].offset == (0.0, 0.03)


@pytest.mark.parametrize("less, more, field, low, high", [
    (Command.OVERLAY_LESS, Command.OVERLAY_MORE, "overlay", 0.0, 1.0),
    (Command.MOVEMENT_LESS, Command.MOVEMENT_MORE, "movement", 0.0, 3.0),
    (Command.SMOOTHING_LESS, Command.SMOOTHING_MORE, "smoothing", 0.0, 0.9),
])
def test_stepped_settings_stay_in_range(less, more, field, low, high):
    state = LiveState()
    assert getattr(press(state, more)[0], field) == pytest.approx(getattr(state, field) + 0.1)
    for _ in range(40):
        state = press(state, more)[0]
    assert getattr(state, field) == high
    for _ in range(40):
        state = press(state, less)[0]
    assert getattr(state, field) == low


def test_apply_never_mutates_its_input():
    state = LiveState()
    for action in KEYMAP.values():
        apply(state, action)
    assert state == LiveState()

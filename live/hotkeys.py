"""Hotkeys as data: a table from key to command, and a pure function that applies a command to the state.

:func:`apply` never touches the world: it returns the new :class:`LiveState`
and the :class:`Request` s that need work elsewhere (the inference thread
recalibrates, searches, reloads).  The help overlay is generated from the
same table, so it cannot drift from what the keys do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum, auto

ZOOM_STEP = 1.1
MOVE_STEP = 0.03  # of the crop side
OVERLAY_STEP = 0.1
MOVEMENT_STEP = 0.1
SMOOTHING_STEP = 0.1
MAX_SMOOTHING = 0.9


class Command(Enum):
    RECALIBRATE = auto()
    FIND_REFERENCE = auto()
    SELECT_AVATAR = auto()
    PREVIOUS_AVATAR = auto()
    NEXT_AVATAR = auto()
    RELOAD_AVATARS = auto()
    PASSTHROUGH = auto()
    ZOOM_IN = auto()
    ZOOM_OUT = auto()
    MOVE_UP = auto()
    MOVE_DOWN = auto()
    MOVE_LEFT = auto()
    MOVE_RIGHT = auto()
    OVERLAY_LESS = auto()
    OVERLAY_MORE = auto()
    MIRROR = auto()
    HUD = auto()
    HELP = auto()
    RELATIVE = auto()
    MOVEMENT_LESS = auto()
    MOVEMENT_MORE = auto()
    SMOOTHING_LESS = auto()
    SMOOTHING_MORE = auto()
    PAUSE = auto()
    QUIT = auto()


@dataclass(frozen=True)
class Action:
    """A command with its argument (the avatar number for SELECT_AVATAR, else 0)."""

    command: Command
    argument: int = 0


class Request(Enum):
    """Work a command asks of the inference thread."""

    CALIBRATE = auto()  # take the current driving frame as the reference pose (ends a pose search)
    TOGGLE_SEARCH = auto()  # start looking for the frame whose pose best matches the avatar, or calibrate on the best
    RELOAD_AVATARS = auto()  # rescan the avatar folder


@dataclass(frozen=True)
class LiveState:
    """Every setting the user changes while running.  Replaced, never mutated; owned by the main thread.

    avatar_count is the one field learnt from elsewhere (the avatar folder, rescanned by the inference
    thread): it is merged with :func:`with_avatar_count`, never by overwriting the user's choices.
    Whether a pose search is running is the inference thread's to know, not a setting.
    """

    avatar_index: int = 0
    avatar_count: int = 1
    passthrough: bool = False
    zoom: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    overlay: float = 0.0
    mirror: bool = False
    hud: bool = True
    help: bool = False
    relative: bool = True
    movement: float = 1.0
    smoothing: float = 0.0
    paused: bool = False
    quit: bool = False


@dataclass(frozen=True)
class Binding:
    keys: str  # the characters that trigger it, as shown in the help
    action: Action
    help: str


ESC = "\x1b"
BINDINGS: tuple[Binding, ...] = (
    Binding("x", Action(Command.RECALIBRATE), "recalibrate: take your current pose as the neutral one"),
    Binding("f", Action(Command.FIND_REFERENCE), "start / finish the search for the pose that best matches the avatar"),
    *(Binding(str(n), Action(Command.SELECT_AVATAR, n), f"avatar {n}") for n in range(1, 10)),
    Binding("a", Action(Command.PREVIOUS_AVATAR), "previous avatar"),
    Binding("d", Action(Command.NEXT_AVATAR), "next avatar"),
    Binding("o", Action(Command.RELOAD_AVATARS), "reload the avatar folder"),
    Binding("p", Action(Command.PASSTHROUGH), "passthrough: send the real camera"),
    Binding("w", Action(Command.ZOOM_IN), "zoom the camera crop in"),
    Binding("s", Action(Command.ZOOM_OUT), "zoom the camera crop out"),
    Binding("i", Action(Command.MOVE_UP), "move the camera crop up"),
    Binding("k", Action(Command.MOVE_DOWN), "move the camera crop down"),
    Binding("j", Action(Command.MOVE_LEFT), "move the camera crop left"),
    Binding("l", Action(Command.MOVE_RIGHT), "move the camera crop right"),
    Binding("z", Action(Command.OVERLAY_LESS), "less avatar overlay on the camera inset"),
    Binding("c", Action(Command.OVERLAY_MORE), "more avatar overlay on the camera inset (to match the pose)"),
    Binding("m", Action(Command.MIRROR), "mirror preview and output"),
    Binding("v", Action(Command.HUD), "show / hide FPS and timings"),
    Binding("h", Action(Command.HELP), "show / hide this help"),
    Binding("r", Action(Command.RELATIVE), "relative / absolute motion"),
    Binding("-", Action(Command.MOVEMENT_LESS), "less movement"),
    Binding("=", Action(Command.MOVEMENT_MORE), "more movement"),
    Binding("[", Action(Command.SMOOTHING_LESS), "less keypoint smoothing"),
    Binding("]", Action(Command.SMOOTHING_MORE), "more keypoint smoothing (steadier, more lag)"),
    Binding(" ", Action(Command.PAUSE), "pause: hold the current frame"),
    Binding("q" + ESC, Action(Command.QUIT), "quit"),
)
KEYMAP: dict[str, Action] = {key: binding.action for binding in BINDINGS for key in binding.keys}


def action_for_key(code: int) -> Action | None:
    """The action bound to a key code as OpenCV's waitKey returns it (-1: no key), case-insensitive."""
    if code < 0:
        return None
    return KEYMAP.get(chr(code & 0xFF).lower())


def help_lines() -> list[str]:
    """One line per binding, for the help overlay."""
    names = {" ": "space", ESC: "esc"}
    lines = []
    for binding in BINDINGS:
        if binding.action.command is Command.SELECT_AVATAR and binding.action.argument > 1:
            continue
        keys = "/".join(names.get(k, k) for k in binding.keys)
        if binding.action.command is Command.SELECT_AVATAR:
            keys, text = "1-9", "avatar 1 to 9"
        else:
            text = binding.help
        lines.append(f"{keys:>9}  {text}")
    return lines


def apply(state: LiveState, action: Action) -> tuple[LiveState, tuple[Request, ...]]:
    """The state after ``action``, and the requests it makes of the inference thread."""
    replace = dataclasses.replace
    command = action.command
    if command is Command.RECALIBRATE:
        return state, (Request.CALIBRATE,)
    if command is Command.FIND_REFERENCE:
        return state, (Request.TOGGLE_SEARCH,)
    if command is Command.SELECT_AVATAR:
        if 1 <= action.argument <= state.avatar_count:
            return replace(state, avatar_index=action.argument - 1), ()
        return state, ()
    if command in (Command.PREVIOUS_AVATAR, Command.NEXT_AVATAR):
        step = 1 if command is Command.NEXT_AVATAR else -1
        return replace(state, avatar_index=(state.avatar_index + step) % state.avatar_count), ()
    if command is Command.RELOAD_AVATARS:
        return state, (Request.RELOAD_AVATARS,)
    if command in (Command.ZOOM_IN, Command.ZOOM_OUT):
        factor = ZOOM_STEP if command is Command.ZOOM_IN else 1 / ZOOM_STEP
        return replace(state, zoom=min(4.0, max(0.25, state.zoom * factor))), ()
    moves = {Command.MOVE_UP: (0, -1), Command.MOVE_DOWN: (0, 1), Command.MOVE_LEFT: (-1, 0), Command.MOVE_RIGHT: (1, 0)}
    if command in moves:
        dx, dy = moves[command]
        x, y = state.offset
        return replace(state, offset=(_clamp(x + dx * MOVE_STEP, -0.5, 0.5), _clamp(y + dy * MOVE_STEP, -0.5, 0.5))), ()
    steps = {
        Command.OVERLAY_LESS: ("overlay", -OVERLAY_STEP, 0.0, 1.0),
        Command.OVERLAY_MORE: ("overlay", OVERLAY_STEP, 0.0, 1.0),
        Command.MOVEMENT_LESS: ("movement", -MOVEMENT_STEP, 0.0, 3.0),
        Command.MOVEMENT_MORE: ("movement", MOVEMENT_STEP, 0.0, 3.0),
        Command.SMOOTHING_LESS: ("smoothing", -SMOOTHING_STEP, 0.0, MAX_SMOOTHING),
        Command.SMOOTHING_MORE: ("smoothing", SMOOTHING_STEP, 0.0, MAX_SMOOTHING),
    }
    if command in steps:
        name, step, low, high = steps[command]
        return replace(state, **{name: round(_clamp(getattr(state, name) + step, low, high), 3)}), ()
    toggles = {Command.PASSTHROUGH: "passthrough", Command.MIRROR: "mirror", Command.HUD: "hud",
               Command.HELP: "help", Command.RELATIVE: "relative", Command.PAUSE: "paused", Command.QUIT: "quit"}
    name = toggles[command]
    return replace(state, **{name: not getattr(state, name)}), ()


def with_avatar_count(state: LiveState, count: int) -> LiveState:
    """The state after the avatar folder was rescanned and holds ``count`` images: the selection made meanwhile is
    kept, and moved to the last avatar only if it no longer exists."""
    return dataclasses.replace(state, avatar_count=count, avatar_index=min(state.avatar_index, count - 1))


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))

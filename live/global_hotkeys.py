"""Optional global hotkeys (pynput): Ctrl+Alt+<key> works while the call app has the focus."""

from __future__ import annotations

import queue

from .hotkeys import KEYMAP
from .status import StatusBoard


def start_global_hotkeys(commands: queue.Queue, status: StatusBoard):
    """Listen for Ctrl+Alt+<key> for every letter and digit binding; returns the listener, or None if unavailable."""
    try:
        from pynput import keyboard

        mapping = {f"<ctrl>+<alt>+{key}": (lambda action=action: commands.put(action))
                   for key, action in KEYMAP.items() if key.isalnum()}
        listener = keyboard.GlobalHotKeys(mapping)
        listener.start()
    except Exception as error:  # no X server, no permission (macOS), no backend
        status.event(f"global hotkeys unavailable ({error}); the keys still work in the preview window")
        return None
    status.event("global hotkeys: Ctrl+Alt+<key> works from any window (e.g. Ctrl+Alt+X recalibrates)")
    return listener

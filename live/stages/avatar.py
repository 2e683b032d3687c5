"""The avatar stage: which avatar of the library is shown, loaded and framed once per change."""

from __future__ import annotations

from ..avatars import Avatar, AvatarError, AvatarLibrary
from ..framing import FaceDetector
from ..status import StatusBoard


class AvatarStage:
    """Holds the current :class:`Avatar` of ``library``, framed at ``side`` x ``side`` for the model.

    :meth:`want` follows the user's selection: an avatar that cannot be read
    keeps the current one on screen (with the reason) and is not retried on
    every frame.  The folder is rescanned only on :meth:`reload`.
    """

    def __init__(self, library: AvatarLibrary, status: StatusBoard, side: int):
        self.library = library
        self.status = status
        self.side = side
        self._detector = FaceDetector(long_range=True)
        self.index = -1
        self.current: Avatar | None = None
        self._unloadable = -1

    def want(self, index: int) -> Avatar | None:
        """The avatar to show for selection ``index`` if it differs from the current one (None: keep the current).

        Raises :class:`AvatarError` only when there is no avatar at all yet.
        """
        index = min(index, len(self.library) - 1)  # a selection made before a rescan shrank the folder
        if index in (self.index, self._unloadable):
            return None
        try:
            avatar = self.library.load(index, self._detector, self.side)
        except AvatarError as error:
            if self.current is None:
                raise
            self._unloadable = index
            self.status.set("avatar", f"{error}; still showing {self.current.name}")
            return None
        self.current, self.index, self._unloadable = avatar, index, -1
        if avatar.framed.face_found:
            self.status.clear("avatar")
        else:
            self.status.set("avatar", f"no face found in avatar {avatar.name}: using its centre")
        self.status.event(f"avatar {index + 1}/{len(self.library)}: {avatar.name}")
        return avatar

    def reload(self) -> int:
        """Rescan the folder; returns how many avatars it holds now (raises AvatarError if none).  The selection is
        read again on the next :meth:`want`: its file may have been edited, or others may have shifted the list."""
        self.library.scan()
        self.index = self._unloadable = -1
        return len(self.library)

    def close(self) -> None:
        self._detector.close()

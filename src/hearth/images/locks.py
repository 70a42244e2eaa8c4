"""Exclusive flocks on the image files' places: one build per cache dir, one writer per image dir.

An image directory's writers (``edit_image``: install-agent, trust-ca, a rollout; ``rollback``;
a build publishing into it) each rename files over the ones there; two at once would have the
last rename silently drop what the other wrote. So each holds the directory's own flock (on the
directory itself: no lock file is left in it) while it reads, writes and renames, and they take
turns. The lock is released when the holder ends, however it ends (a killed process too).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hearth.errors import ImageError
from hearth.logging import get_logger

_log = get_logger("images.locks")


@contextmanager
def held_exclusively(fd: int, *, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive flock on ``fd`` for the block; while another holds it: ``on_wait``,
    then wait for it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        on_wait()
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def exclusive_image_dir(directory: Path) -> Iterator[None]:
    """Be the only writer of the image files in ``directory`` for the block (ImageError when
    the directory cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ImageError(
            f"cannot lock {directory} to change the image in it: {exc.strerror or exc}"
        ) from exc

    def waiting() -> None:
        _log.info("image_dir_busy_waiting", directory=str(directory))

    try:
        with held_exclusively(fd, on_wait=waiting):
            yield
    finally:
        os.close(fd)

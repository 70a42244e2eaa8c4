"""One holder of a state dir at a time: a controller, or a master-key rotation."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from hearth.errors import ConfigError, Conflict

STATE_DIR_LOCK_FILE = "controller.lock"
CONTROLLER = "the controller"


class StateDirLock:
    """One holder of a state dir at a time: a controller for its whole life, or a master-key
    rotation, which must not run beside a controller (that keeps sealing new secrets under the
    key it loaded at start, so the old key could never be retired).

    An exclusive ``flock`` on ``<state dir>/controller.lock``, which names the holder and its pid
    for whoever is refused. The kernel drops it when the holder exits, even by SIGKILL, and the
    descriptor is close-on-exec: the VMs a controller started never hold it after the controller
    is gone. Take it with ``StateDirLock.take``; ``close`` lets it go.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def take(cls, state_dir: Path, *, holder: str) -> StateDirLock:
        """Hold ``state_dir`` for ``holder`` (``CONTROLLER``, ...), without waiting: Conflict
        naming whoever holds it now; ConfigError if the lock file cannot be opened."""
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot make the state dir {state_dir}: {exc.strerror}") from exc
        fd, held = lock_exclusively(state_dir / STATE_DIR_LOCK_FILE, "the state dir's lock")
        if not held:
            who, whom = _holder_named_in(fd)
            os.close(fd)
            raise Conflict(
                f"the state dir {state_dir} is in use by {who}: stop {whom} first (one "
                "controller per state dir, and a master-key rotation only while none runs)"
            )
        with contextlib.suppress(OSError):  # the name only helps whoever is refused
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {holder}\n".encode(), 0)
        return cls(fd)

    def close(self) -> None:
        """Let the state dir go (again: nothing)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # which drops the flock


def lock_exclusively(path: Path, what: str) -> tuple[int, bool]:
    """Open ``path`` (made 0600 if missing) and take its exclusive ``flock`` without waiting:
    the close-on-exec descriptor, and whether it is held now (False: another process holds it;
    the caller closes the descriptor). ConfigError naming ``what`` if it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open {what} {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd, False
    except OSError as exc:
        os.close(fd)
        raise ConfigError(f"cannot lock {path}: {exc.strerror}") from exc
    return fd, True


def _holder_named_in(fd: int) -> tuple[str, str]:
    """Who holds the lock, as its file names them, and how to call them after: ("the
    controller (pid 1234)", "the controller")."""
    pid, _, holder = os.pread(fd, 200, 0).decode(errors="replace").strip().partition(" ")
    if not (pid.isdigit() and holder):
        return "another process", "it"  # it has only just taken the lock
    return f"{holder} (pid {pid})", holder

"""Paths confined to the workspace: every component opened from its parent's descriptor.

A client names a path relative to the workspace (an absolute one is accepted only when it lies
inside the workspace's own path). ``..`` is refused outright. The path is then walked one
component at a time, each directory opened with ``O_NOFOLLOW`` from the descriptor of its
parent (``openat``), never by its full name, so nothing swapped in between two steps can lead
the walk elsewhere. A symlink on the way is followed only by reading it and walking its target
the same way: a relative target from where the link sits, an absolute one only when it names a
place inside the workspace; a target that climbs above the workspace, or points anywhere else,
is refused (``PathOutsideWorkspace``). What the walk ends at is a ``Located``: the descriptor
of the deepest directory that exists and the names below it, so a caller acts on it with the
``*at`` calls (``dir_fd=``) and never by a path the guest could redirect.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hearth_agent.errors import InvalidInput, PathConflict, PathNotFound, PathOutsideWorkspace

MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255
# As the kernel does (ELOOP): a walk that meets more symlinks than this is refused.
MAX_SYMLINK_HOPS = 40
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Located:
    """Where a path ends: ``dir_fd``, the deepest existing directory on the way (owned by the
    ``locate`` block), and ``rest``, the names below it.

    When the path exists, ``rest`` is its one name in ``dir_fd`` (empty for the workspace
    itself) and ``st`` its ``lstat``; when it does not, ``rest`` is every missing component,
    ``st`` is None and ``trail`` ends where the walk stopped.
    """

    dir_fd: int
    rest: tuple[str, ...]
    st: os.stat_result | None
    # The components from the workspace to ``dir_fd`` (after following symlinks).
    trail: tuple[str, ...]

    @property
    def exists(self) -> bool:
        """Whether something is at the path."""
        return self.st is not None

    @property
    def name(self) -> str:
        """The last component (empty for the workspace itself)."""
        return self.rest[-1] if self.rest else ""

    @property
    def is_root(self) -> bool:
        """Whether the path is the workspace itself."""
        return self.st is not None and not self.rest

    @property
    def is_dir(self) -> bool:
        """Whether the path is a directory (not a symlink to one: those were followed)."""
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        """Whether the path is a regular file."""
        return self.st is not None and stat.S_ISREG(self.st.st_mode)

    @property
    def location(self) -> tuple[str, ...]:
        """The path's components from the workspace, symlinks resolved."""
        return self.trail + self.rest


class Workspace:
    """The directory a VM's files live in; every path a client sends is resolved inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def components(self, path: str) -> tuple[str, ...]:
        """The components of a client's ``path``; PathOutsideWorkspace for ``..`` or an
        absolute path elsewhere, InvalidInput for one that is not a path."""
        if "\0" in path or len(path) > MAX_PATH_CHARS:
            raise InvalidInput(f"path must be at most {MAX_PATH_CHARS} characters, without NUL")
        if path.startswith("/"):
            return self._inside_root(
                path,
                outside=f"{path!r} is outside the workspace: paths are relative to {self.root}",
            )
        parts = tuple(part for part in path.split("/") if part not in ("", "."))
        if ".." in parts:
            raise PathOutsideWorkspace(f"{path!r}: '..' is not accepted in a workspace path")
        for part in parts:
            if len(os.fsencode(part)) > MAX_NAME_BYTES:
                raise InvalidInput(f"{path!r}: a name is longer than {MAX_NAME_BYTES} bytes")
        return parts

    def _inside_root(self, absolute: str, *, outside: str) -> tuple[str, ...]:
        """The components of an absolute path inside the workspace (as configured or as the
        kernel resolves it); PathOutsideWorkspace saying ``outside`` when it is not inside.
        ``..`` in it is never inside."""
        target = PurePosixPath(absolute)
        if ".." not in target.parts:
            for root in {PurePosixPath(self.root), PurePosixPath(os.path.realpath(self.root))}:
                if target == root or root in target.parents:
                    return target.relative_to(root).parts
        raise PathOutsideWorkspace(outside)

    def display(self, parts: tuple[str, ...]) -> str:
        """A path as the API shows it: relative, ``.`` for the workspace itself."""
        return "/".join(parts) or "."

    @contextlib.contextmanager
    def locate(
        self, path: str, *, follow_last: bool = True, may_be_missing: bool = False
    ) -> Iterator[Located]:
        """Walk ``path`` in the workspace (see the module's docstring); the descriptors are
        closed when the block ends. ``follow_last``: a symlink at the end is followed (reads,
        writes) or taken as itself (removal). ``may_be_missing``: a path that does not exist
        yet ends the walk (writes) instead of PathNotFound."""
        walk = _Walk(self, path)
        try:
            yield walk.run(self.components(path), follow_last, may_be_missing)
        finally:
            walk.close()

    def open_root(self) -> int:
        """A descriptor of the workspace directory (PathNotFound when it is missing)."""
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise PathNotFound(f"the workspace {self.root} is not available") from exc

    def symlink_target_parts(
        self, target: str, where: tuple[str, ...], *, shown: str
    ) -> tuple[str, ...]:
        """Where a symlink at ``where`` (components from the workspace, the link's own name
        last) with ``target`` points, as components from the workspace; PathOutsideWorkspace
        when that is outside. ``..`` after a name is refused: it would follow that name as it
        is on disk (maybe a symlink itself), which a lexical check cannot see."""
        if target.startswith("/"):
            return self._inside_root(
                target, outside=f"{shown} is a symlink to {target!r}, out of the workspace"
            )
        resolved = list(where[:-1])
        named = False
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if named or not resolved:
                    raise PathOutsideWorkspace(
                        f"{shown} is a symlink to {target!r}, which leads out of the workspace"
                    )
                resolved.pop()
            else:
                named = True
                resolved.append(part)
        return tuple(resolved)


class _Walk:
    """One walk down the workspace: a stack of open directory descriptors and their names."""

    def __init__(self, workspace: Workspace, shown: str) -> None:
        self.workspace = workspace
        self.shown = shown
        self.fds: list[int] = []
        self.names: list[str] = []

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())

    def _restart_at_root(self) -> None:
        while len(self.fds) > 1:
            os.close(self.fds.pop())
        self.names.clear()

    def run(self, parts: tuple[str, ...], follow_last: bool, may_be_missing: bool) -> Located:
        self.fds.append(self.workspace.open_root())
        pending = deque(parts)
        hops = 0
        while pending:
            name = pending.popleft()
            try:
                st = os.stat(name, dir_fd=self.fds[-1], follow_symlinks=False)
            except FileNotFoundError:
                if may_be_missing:
                    return Located(self.fds[-1], (name, *pending), None, tuple(self.names))
                raise PathNotFound(f"{self.shown}: no such file or directory") from None
            except OSError as exc:
                raise PathNotFound(f"{self.shown}: {exc.strerror}") from exc
            last = not pending
            if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise PathOutsideWorkspace(f"{self.shown}: too many levels of symlinks")
                # The target, resolved to components from the workspace (no ``..`` left), is
                # walked from the workspace again.
                target = os.readlink(name, dir_fd=self.fds[-1])
                where = (*self.names, name)
                resolved = self.workspace.symlink_target_parts(target, where, shown=self.shown)
                self._restart_at_root()
                pending.extendleft(reversed(resolved))
                continue
            if last:
                return Located(self.fds[-1], (name,), st, tuple(self.names))
            if not stat.S_ISDIR(st.st_mode):
                raise PathConflict(f"{self.shown}: {name!r} on the way is not a directory")
            self.fds.append(self._open_dir(name))
            self.names.append(name)
        # Nothing left to walk: the path is the workspace itself (or a symlink to it).
        self._restart_at_root()
        return Located(self.fds[0], (), os.fstat(self.fds[0]), ())

    def _open_dir(self, name: str) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=self.fds[-1])
        except OSError as exc:
            # Replaced by a symlink (ELOOP) or a file (ENOTDIR) since it was looked at.
            raise PathConflict(f"{self.shown}: {name!r} changed while it was opened") from exc


def open_dir_at(dir_fd: int, name: str) -> int:
    """A descriptor of directory ``name`` in ``dir_fd`` (the directory itself when ``name`` is
    empty), never through a symlink."""
    if not name:
        return os.dup(dir_fd)
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def make_dirs_at(dir_fd: int, names: tuple[str, ...], *, mode: int = 0o755) -> int:
    """Create each of ``names`` under ``dir_fd`` in turn (``mkdir -p``, never through a
    symlink); a descriptor of the last one (a duplicate of ``dir_fd`` for no names)."""
    fd = os.dup(dir_fd)
    try:
        for name in names:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=fd)
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError:
        os.close(fd)
        raise
    return fd

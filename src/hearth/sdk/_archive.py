"""A directory's download, unpacked here: the tar comes from the guest, which user code may have
taken over, so nothing in it is trusted.

Every member is checked before it is written: an absolute name or one with ``..``, a symlink to
an absolute path or one that leads out of the download (``..`` only at its start, never more
than its depth), a member below a symlink or a file (checked on disk, so that a case-insensitive
file system cannot hide one), a name that comes twice, a hard link to anything but a regular
file earlier in the archive, a device or a fifo: each refuses the whole archive with
``InvalidArchive``. Python's ``data`` filter still runs after our checks, as a second layer (on
its own it can be walked around before Python 3.11.13, 3.12.11 and 3.13.4: CVE-2025-4517).

Before that, each header is checked before ``tarfile`` reads what follows it: ``tarfile`` reads
an extended header (pax, GNU long name) whole into memory and a sparse member's map entry by
entry, so a few compressed KiB could make it hold GiBs. The extended headers before one member
may hold ``MAX_EXTENDED_BYTES`` together (and the archive's global ones as much), at most
``MAX_EXTENDED_HEADERS`` of them; a sparse member is refused at its header. The whole archive
is bounded too (``_transfer.DownloadCap``, which counts it as it arrives as well): each header
is counted before it is read on, an extended one with its data; a member's data once
``tarfile`` has applied the pax records before it (a pax or global ``size`` record replaces the
header's) and before it is read. So no stream, compressed or not, writes past ``max_bytes``.

The archive is unpacked into a new directory beside the target; only a whole, valid archive is
put in place: renamed to a target that does not exist yet, or merged into one that does (a
file of the archive replaces one of the same name, a directory's other entries are kept;
a directory of the archive where there is something else, or the reverse, is refused before
anything moves). On any failure that directory is removed: nothing of the archive is left.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from hearth.sdk._errors import InvalidArchive
from hearth.sdk._transfer import ChunkReader, DownloadCap

MAX_MTIME = 2**40  # seconds either side of 1970: past it os.utime overflows
# A path is at most 4 KiB and an extended attribute 64 KiB: this leaves room for a few of them.
MAX_EXTENDED_BYTES = 256 * 1024
# Before one member (each nests tarfile's reading one level deeper): a real tar has one or two.
MAX_EXTENDED_HEADERS = 8
_EXTENDED_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)


def extract_tar(source: IO[bytes] | ChunkReader, target: Path, cap: DownloadCap) -> None:
    """Unpack the tar read from ``source`` into directory ``target`` (made with its parents if
    missing, merged into if there), all of it or nothing, at most ``cap``; see the module's
    docstring."""
    existing = target.is_dir()
    if not existing and (target.exists() or target.is_symlink()):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Beside the directory the target is (or will be), so that renames stay on its file system.
    place = target.resolve()
    stage = place.parent / f".{place.name}.{secrets.token_hex(4)}.part"
    stage.mkdir()
    try:
        try:
            with _BoundedArchive.open(fileobj=source, mode="r|*", cap=cap) as archive:  # type: ignore[call-overload]
                # Every member passes _MemberCheck, then the data filter, before it is written.
                archive.extractall(stage, filter=_MemberCheck(stage, str(target)))  # noqa: S202
        except tarfile.TarError as exc:
            raise InvalidArchive(f"{target}: the download is not a readable tar: {exc}") from exc
        if existing:
            _check_merge(stage, place)
            _merge(stage, place)
        else:
            stage.rename(place)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@dataclass
class _HeaderBudget:
    """What the extended headers read so far hold: those before the member being read, and
    the archive's global ones."""

    headers: int = 0
    bytes: int = 0
    global_bytes: int = 0

    def admit(self, header: tarfile.TarInfo) -> None:
        """Count ``header`` before its data is read: a HeaderError past the bounds."""
        if header.type == tarfile.GNUTYPE_SPARSE:
            _refuse_sparse()
        if header.type not in _EXTENDED_TYPES:
            self.headers = self.bytes = 0  # a member: the next one's headers start afresh
            return
        self.headers += 1
        self.bytes += header.size
        if header.type == tarfile.XGLTYPE:
            self.global_bytes += header.size
        if self.headers > MAX_EXTENDED_HEADERS:
            raise tarfile.HeaderError(
                f"more than {MAX_EXTENDED_HEADERS} extended headers (pax, long names) "
                "before one member"
            )
        if max(self.bytes, self.global_bytes) > MAX_EXTENDED_BYTES:
            raise tarfile.HeaderError(
                f"extended headers (pax, long names) of more than {MAX_EXTENDED_BYTES} bytes "
                f"({max(self.bytes, self.global_bytes)})"
            )


class _BoundedHeader(tarfile.TarInfo):
    """A header that ``tarfile`` reads on from only once its archive's budget admits it."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo | None:
        if self.size < 0:  # a base-256 size can be: it would take from the budget and the cap
            raise tarfile.HeaderError(f"a header with a negative size ({self.size})")
        if isinstance(archive, _BoundedArchive):
            archive.budget.admit(self)
            # The block, and an extended header's data (read next); a member's data is counted
            # by _BoundedArchive.next, once the pax records before it have set its size.
            extended = self.type in _EXTENDED_TYPES
            archive.cap.unpack(tarfile.BLOCKSIZE + (self.size if extended else 0))
        member: tarfile.TarInfo | None = super()._proc_member(archive)  # type: ignore[misc]
        return member

    def _proc_gnusparse_10(self, *_: object) -> None:
        # A pax sparse map, read from the member's data for as many entries as it claims.
        _refuse_sparse()


def _refuse_sparse() -> NoReturn:
    raise tarfile.HeaderError("a sparse member (sparse files are refused)")


class _BoundedArchive(tarfile.TarFile):
    """A tar read with ``_BoundedHeader``'s checks, keeping the budget and the cap they count."""

    tarinfo = _BoundedHeader

    def __init__(self, *args: Any, cap: DownloadCap, **kwargs: Any) -> None:
        # Both before the base reads the first header.
        self.budget = _HeaderBudget()
        self.cap = cap
        super().__init__(*args, **kwargs)

    def next(self) -> tarfile.TarInfo | None:
        """The next member, its data counted by the cap before it is read; those before it
        are no longer kept (tarfile keeps every member it has read, with its pax records,
        though a stream is read once)."""
        # tarfile reads the first member as it opens the archive (counted then), then hands it out.
        fresh = self.firstmember is None  # type: ignore[attr-defined]
        member = super().next()
        self.members.clear()  # type: ignore[attr-defined]
        if member is not None and fresh:
            if member.size < 0:  # a pax size can be: it would take from the cap
                raise tarfile.HeaderError(f"a member with a negative size ({member.size})")
            # Extracting reads the member's size; tarfile steps to the next header by the
            # header's own size when only a global pax record changed it: the larger is read.
            self.cap.unpack(max(member.size, self.offset - member.offset_data))
        return member


class _MemberCheck:
    """The ``extractall`` filter that refuses, before it is written, a member that could write
    outside the staging directory ``stage`` (or leave a link out of it); then the ``data``
    filter."""

    def __init__(self, stage: Path, shown: str) -> None:
        self._stage = stage
        self._shown = shown
        # Regular files extracted so far: what a hard link may name.
        self._files: set[tuple[str, ...]] = set()

    def __call__(self, member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
        parts = self._parts(member.name, member.name)
        if member.issparse() or not (
            member.isreg() or member.isdir() or member.issym() or member.islnk()
        ):
            self._refuse(
                member.name,
                "is not a file, directory or link (devices, fifos and sparse files are refused)",
            )
        if not parts and not member.isdir():
            self._refuse(member.name, "has no name")
        if not -MAX_MTIME <= member.mtime <= MAX_MTIME:  # also refuses NaN
            self._refuse(member.name, "has no usable mtime")
        self._check_on_disk(member, parts)
        if member.issym():
            self._check_symlink(member, parts)
        elif member.islnk():
            link = f"is a hard link to {member.linkname!r}, which "
            if self._parts(member.linkname, member.name, link) not in self._files:
                self._refuse(member.name, f"{link}is not a file earlier in the archive")
        if member.isreg() or member.islnk():
            self._files.add(parts)
        checked: tarfile.TarInfo = tarfile.data_filter(member, dest_path)
        return checked

    def _parts(self, name: str, member: str, what: str = "") -> tuple[str, ...]:
        """``name``'s components, without empty ones and ``.``; refused (``member`` named, what
        ``name`` is to it said by ``what``) when absolute or with ``..``."""
        if "\0" in name:
            self._refuse(member, f"{what}has a NUL in its name")
        if name.startswith("/"):
            self._refuse(member, f"{what}is an absolute path")
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        if ".." in parts:
            self._refuse(member, f"{what}climbs out with '..'")
        return parts

    def _check_on_disk(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        """Each directory above the member is one (not a symlink or a file of the archive),
        and nothing is at its name yet, but a directory for a directory."""
        path = self._stage
        for index, part in enumerate(parts):
            path = path / part
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                return  # nor anything below it: tarfile makes the directories
            last = index == len(parts) - 1
            if last and not (stat.S_ISDIR(mode) and member.isdir()):
                self._refuse(member.name, "appears twice in the archive")
            if not last and stat.S_ISLNK(mode):
                self._refuse(member.name, f"is below a symlink ({'/'.join(parts[: index + 1])!r})")
            if not last and not stat.S_ISDIR(mode):
                self._refuse(member.name, f"is below a file ({'/'.join(parts[: index + 1])!r})")

    def _check_symlink(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        """A relative target that stays within the download: ``..`` only at its start (after a
        name, a ``..`` would climb from wherever that name leads), at most as often as the
        member is deep. Every directory above the member is a real one, so the count holds."""
        target = member.linkname
        if "\0" in target or not target:
            self._refuse(member.name, "is a symlink to an empty name or one with a NUL")
        if target.startswith("/"):
            self._refuse(member.name, "is a symlink to an absolute path")
        steps = [step for step in target.split("/") if step not in ("", ".")]
        ups = next((index for index, step in enumerate(steps) if step != ".."), len(steps))
        if ups > len(parts) - 1 or ".." in steps[ups:]:
            self._refuse(member.name, f"is a symlink that leads out of the download ({target!r})")

    def _refuse(self, member: str, why: str) -> NoReturn:
        raise InvalidArchive(f"{self._shown}: member {member!r} {why}; nothing was written", member)


def _check_merge(source: Path, target: Path) -> None:
    """Refuse, before anything moves, a directory of the archive where ``target`` has something
    else (a file, a symlink), or a file of the archive where it has a directory."""
    with os.scandir(source) as scanned:
        entries = list(scanned)
    for entry in entries:
        there = target / entry.name
        try:
            mode = there.lstat().st_mode
        except FileNotFoundError:
            continue
        if entry.is_dir(follow_symlinks=False):
            if not stat.S_ISDIR(mode):
                raise NotADirectoryError(
                    errno.ENOTDIR, "the download has a directory where this is not one", str(there)
                )
            _check_merge(Path(entry.path), there)
        elif stat.S_ISDIR(mode):
            raise IsADirectoryError(
                errno.EISDIR, "the download has a file where this is a directory", str(there)
            )


def _merge(source: Path, target: Path) -> None:
    """Move what ``source`` holds into ``target``: a new entry renamed, a file replacing one
    of the same name, a directory merged into the one there."""
    with os.scandir(source) as scanned:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in scanned]
    for name, is_dir in entries:
        there = target / name
        if is_dir and there.is_dir() and not there.is_symlink():
            _merge(source / name, there)
        else:
            os.replace(source / name, there)

"""An uploaded tar's headers, each admitted before ``tarfile`` reads what follows it.

``tarfile`` reads an extended header (pax, GNU long name) whole into memory, reads the headers
before one member one nesting level deeper each (each still held), keeps a copy of every member
it has read with its pax records, and reads a sparse member's map entry by entry, for as many
entries as the map claims. Measured on 3.11 without these bounds: 2.7 MiB of gzip made of
900 KiB pax headers before one member held 461 MiB and ended in a RecursionError; 1.9 MiB of
gzip with one such header before each of 2,000 members held 1.8 GiB; 63 KiB of gzip claiming a
sparse map held 264 MiB for 110 s.

So ``BoundedTarFile`` refuses (``tarfile.HeaderError``, which ``archive`` reports as
``invalid_archive``): more than ``MAX_EXTENDED_HEADERS`` extended headers before one member,
extended headers before one member of more than ``MAX_EXTENDED_BYTES`` together, global pax
headers of more than ``MAX_EXTENDED_BYTES`` over the archive (they apply to every later member),
extended headers of more than ``MAX_ARCHIVE_HEADER_BYTES`` over the archive, a header with a
negative size and any sparse member, at its header; and it keeps none of the members it has
handed out.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import Any, NoReturn

# A path is at most 4 KiB: a long name and a pax header with room to spare.
MAX_EXTENDED_BYTES = 1024 * 1024
# Before one member: GNU tar writes at most a long name and a long link, a pax writer one
# extended header (and a global one): each nests tarfile's reading a level deeper.
MAX_EXTENDED_HEADERS = 8
# All of an archive's extended headers: a pax writer's few hundred bytes for each of up to
# ``archive.MAX_MEMBERS`` members, which tarfile parses (not holds) header by header.
MAX_ARCHIVE_HEADER_BYTES = 64 * 1024 * 1024
_MEMBER_HEADERS = frozenset(
    {tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


@dataclass
class _HeaderTally:
    """The extended headers read so far: before the member being read, and over the archive."""

    before_member: int = 0
    before_member_bytes: int = 0
    global_bytes: int = 0
    archive_bytes: int = 0

    def admit(self, header: tarfile.TarInfo) -> None:
        """Count ``header`` before its data is read; a ``HeaderError`` past a bound."""
        if header.type == tarfile.XGLTYPE:
            self.global_bytes += header.size
        elif header.type not in _MEMBER_HEADERS:
            self.before_member = self.before_member_bytes = 0  # a member: the next starts afresh
            return
        self.before_member += 1
        self.before_member_bytes += header.size
        self.archive_bytes += header.size
        if self.before_member > MAX_EXTENDED_HEADERS:
            raise tarfile.HeaderError(
                f"more than {MAX_EXTENDED_HEADERS} extended headers (pax, long names) "
                "before one member"
            )
        for held, bound, what in (
            (self.before_member_bytes, MAX_EXTENDED_BYTES, "before one member"),
            (self.global_bytes, MAX_EXTENDED_BYTES, "global (pax)"),
            (self.archive_bytes, MAX_ARCHIVE_HEADER_BYTES, "in the whole archive"),
        ):
            if held > bound:
                raise tarfile.HeaderError(
                    f"{held} bytes of extended headers {what} (at most {bound})"
                )


def refuse_sparse() -> NoReturn:
    """Refuse a sparse member (its map would be read entry by entry)."""
    raise tarfile.HeaderError("a sparse member (sparse files are refused)")


class _AdmittedHeader(tarfile.TarInfo):
    """A header that ``tarfile`` reads on from only once its archive's tally admits it."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo | None:
        if self.type == tarfile.GNUTYPE_SPARSE:  # its map's blocks follow, as many as it says
            refuse_sparse()
        if self.size < 0:  # a base-256 size can be: it would take from the tallies
            raise tarfile.HeaderError(f"a header with a negative size ({self.size})")
        if isinstance(archive, BoundedTarFile):
            archive.tally.admit(self)
        member: tarfile.TarInfo | None = super()._proc_member(archive)  # type: ignore[misc]
        return member

    # The pax sparse formats' maps (0.0 and 0.1 in the header, 1.0 read from the member's data).
    def _proc_gnusparse_00(self, *_: object) -> None:
        refuse_sparse()

    def _proc_gnusparse_01(self, *_: object) -> None:
        refuse_sparse()

    def _proc_gnusparse_10(self, *_: object) -> None:
        refuse_sparse()


class BoundedTarFile(tarfile.TarFile):
    """A tar read with its headers admitted (see the module's docstring)."""

    tarinfo = _AdmittedHeader

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.tally = _HeaderTally()  # before the base reads the first header
        super().__init__(*args, **kwargs)

    def next(self) -> tarfile.TarInfo | None:
        """The next member; the ones before it are no longer kept (a stream is read once)."""
        member = super().next()
        self.members.clear()  # type: ignore[attr-defined]  # tarfile keeps all it has read
        return member

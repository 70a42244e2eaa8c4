"""Wire schemas of the files routes (``/api/vms/{id}/files``), camelCase like the rest."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hearth.api.schemas import WireModel

FILE_MEDIA_TYPE = "application/octet-stream"
TAR_MEDIA_TYPE = "application/x-tar"
# Which of the two a GET answered with.
FILE_TYPE_HEADER = "X-Hearth-File-Type"
MAX_PATH_CHARS = 4096

EntryType = Literal["file", "dir", "symlink", "other"]


class FileWritten(WireModel):
    """``PUT``: what was written: a file (its size, sha256 and mode) or a tar's tree (its
    members and the bytes of its files)."""

    path: str = Field(description="relative to the workspace, symlinks resolved")
    type: Literal["file", "dir"]
    size: int = Field(description="bytes of the file, or of the tar's files together")
    sha256: str | None = Field(default=None, description="of the file as written")
    mode: str | None = Field(default=None, description="the file's mode, octal (e.g. 0644)")
    entries: int | None = Field(default=None, description="how many members the tar had")


class FileEntry(WireModel):
    """One entry of a directory (a symlink is shown as itself, with its ``target``)."""

    name: str
    type: EntryType
    size: int
    mode: str = Field(description="octal permission bits, e.g. 0644")
    mtime: float = Field(description="seconds since the epoch")
    target: str | None = Field(default=None, description="a symlink's target")


class FileListing(WireModel):
    """``GET …/files/list``: a directory's entries by name (a file's own, for a file)."""

    path: str
    type: EntryType
    entries: list[FileEntry]
    truncated: bool = Field(description="the directory has more entries than were listed")


class FileRemoved(WireModel):
    """``DELETE``: what was removed."""

    path: str
    type: EntryType
    removed: bool


def _binary(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string", "format": "binary", "description": description}}


UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file's bytes; or, with `Content-Type: application/x-tar`, a tar "
        "(gzip, bzip2 or xz compressed too) extracted into the directory `path`. Sent with a "
        "Content-Length or chunked; at most HEARTH_FILES_MAX_BYTES.",
        "content": {
            FILE_MEDIA_TYPE: _binary("the file"),
            TAR_MEDIA_TYPE: _binary("a tar of the directory's contents"),
        },
    }
}

DOWNLOAD_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file (application/octet-stream, with its Content-Length) or, for a "
        "directory, a tar of what is in it (application/x-tar), streamed",
        "content": {
            FILE_MEDIA_TYPE: _binary("the file's bytes"),
            TAR_MEDIA_TYPE: _binary("a POSIX tar of the directory's contents"),
        },
        "headers": {
            FILE_TYPE_HEADER: {
                "description": "`file` or `dir`: what the path is",
                "schema": {"type": "string", "enum": ["file", "dir"]},
            }
        },
    }
}

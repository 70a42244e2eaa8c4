"""The file endpoints: the workspace's files written, read, listed and removed.

    PUT    /files?path=P[&mode=0644][&max_bytes=N]
           body: the file's bytes → 200 {"path", "type": "file", "size", "sha256", "mode"}
           Content-Type: application/x-tar: the tar extracted into directory P
           → 200 {"path", "type": "dir", "size", "entries"}
    GET    /files?path=P       → the file (application/octet-stream, with its Content-Length)
                                 or a tar of the directory (application/x-tar);
                                 X-Hearth-File-Type: file | dir
    DELETE /files?path=P[&recursive=true] → 200 {"path", "type", "removed": true}
    GET    /files/list?path=P  → 200 {"path", "type", "entries": [{"name", "type", "size",
                                 "mode", "mtime", "target"}], "truncated"}

Paths are relative to the workspace (``workspace``); the body of a PUT is read as it arrives,
Content-Length or chunked, and refused past ``max_bytes`` (the controller sends its cap; the
agent's own default otherwise) with nothing left behind. A PUT refused before the end of its
body reads the rest (up to the cap) before answering, as HTTP/1.1 without ``100-continue``
needs: a client still sending would otherwise get a reset instead of the answer. A PUT that
finds the disk (or its quota) full answers 507 ``disk_full``; any other write failure 500
``storage_error``. Uploads in flight stage their bytes under hidden names (``staging``), which
listings and directory downloads leave out.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping

from hearth_agent.errors import AgentError, InvalidInput
from hearth_agent.files import TAR_CONTENT_TYPE, WorkspaceFiles
from hearth_agent.routing import Request, Response, Route, json_response, query_flag

FILE_TYPE_HEADER = "X-Hearth-File-Type"
# The cap on an upload when the controller sends none (it always does: HEARTH_FILES_MAX_BYTES).
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
_MODE = re.compile(r"0?[0-7]{3}")
_DIGITS = re.compile(r"[0-9]{1,19}")


class FileRoutes:
    """The file endpoints over one workspace."""

    def __init__(self, *, files: WorkspaceFiles, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._files = files
        self._max_bytes = max_bytes

    def routes(self) -> tuple[Route, ...]:
        """The routes to mount in the app's table (all need the bearer token)."""
        return (
            Route("/files/list", {"GET": self._list}),
            Route("/files", {"GET": self._get, "PUT": self._put, "DELETE": self._delete}),
        )

    def _put(self, request: Request, params: Mapping[str, str]) -> Response:
        path = _query(request, "path", required=True)
        mode = _mode(_query(request, "mode"))
        max_bytes = _max_bytes(_query(request, "max_bytes"), self._max_bytes)
        body = request.open_body(max_bytes)
        try:
            if not _is_tar(request.header("Content-Type")):
                return json_response(200, self._files.write_file(path, body, mode=mode))
            if mode is not None:
                raise InvalidInput("query parameter 'mode' is for a file; a tar carries modes")
            extracted = self._files.extract_archive(path, body, max_bytes=max_bytes)
            return json_response(200, extracted)
        except Exception:
            # Refused (and cleaned up) before the end of the body: read the rest, up to the cap,
            # so that a client still sending gets this answer rather than a reset connection.
            with contextlib.suppress(AgentError):
                body.drain()
            raise

    def _get(self, request: Request, params: Mapping[str, str]) -> Response:
        download = self._files.download(_query(request, "path") or "")
        headers: tuple[tuple[str, str], ...] = ((FILE_TYPE_HEADER, download.kind),)
        if download.size is not None:
            headers += (("Content-Length", str(download.size)),)
        return Response(
            status=200,
            body=b"",
            content_type=download.content_type,
            headers=headers,
            stream=download.stream,
        )

    def _delete(self, request: Request, params: Mapping[str, str]) -> Response:
        path = _query(request, "path", required=True)
        recursive = query_flag(request, "recursive")
        return json_response(200, self._files.remove(path, recursive=recursive))

    def _list(self, request: Request, params: Mapping[str, str]) -> Response:
        return json_response(200, self._files.listing(_query(request, "path") or ""))


def _query(request: Request, name: str, *, required: bool = False) -> str:
    values = request.query.get(name)
    if not values:
        if required:
            raise InvalidInput(f"query parameter '{name}' is required")
        return ""
    return values[-1]


def _mode(text: str) -> int | None:
    if not text:
        return None
    if not _MODE.fullmatch(text):
        raise InvalidInput("query parameter 'mode' must be octal permission bits, e.g. 0644")
    return int(text, 8)


def _max_bytes(text: str, default: int) -> int:
    if not text:
        return default
    if not _DIGITS.fullmatch(text) or int(text) < 1:
        raise InvalidInput("query parameter 'max_bytes' must be a positive whole number")
    return int(text)


def _is_tar(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == TAR_CONTENT_TYPE

"""``/api/vms/{id}/files``: the files of a CLI VM's workspace, streamed both ways.

``PUT`` writes the body to the file at ``path`` (or, with ``Content-Type: application/x-tar``,
extracts it into the directory there); ``GET`` answers the file, or a tar of the directory,
as it comes from the VM (``X-Hearth-File-Type`` says which); ``DELETE`` removes; ``GET
…/files/list`` lists. Paths are relative to the VM's workspace and confined to it by the
VM's agent. An upload is not bounded by HEARTH_MAX_BODY_BYTES but by HEARTH_FILES_MAX_BYTES
(the key guard lets exactly this route's bodies through: ``UPLOAD_PATH``), and is never held
here: each chunk goes on to the agent as it arrives.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from hearth.agent_download import AgentDownload
from hearth.api.auth import Ctl, Key, scope_of
from hearth.api.headers import decimal
from hearth.api.schemas import ERROR_RESPONSES, ErrorOut, error_responses
from hearth.api.schemas_files import (
    DOWNLOAD_RESPONSE,
    FILE_MEDIA_TYPE,
    FILE_TYPE_HEADER,
    MAX_PATH_CHARS,
    TAR_MEDIA_TYPE,
    UPLOAD_BODY,
    FileListing,
    FileRemoved,
    FileWritten,
)
from hearth.api.streams import KeyHolds, guarded, key_holds
from hearth.control.files import FileService, FileUpload
from hearth.errors import HearthError, InvalidInput
from hearth.logging import get_logger

router = APIRouter(tags=["files"], responses=ERROR_RESPONSES)
_log = get_logger("api.files")
# The one route whose bodies the key guard leaves unbuffered, bounded by the files cap instead.
UPLOAD_PATH = re.compile(r"/api/vms/[^/]+/files")

PathQuery = Annotated[
    str,
    Query(
        max_length=MAX_PATH_CHARS,
        description="relative to the VM's workspace (`..` and paths out of it are refused)",
    ),
]


async def _client_body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client gone mid-body ends the upload unfinished."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect as exc:
        raise InvalidInput("the upload broke off before its end; nothing was written") from exc


def _declared_length(request: Request) -> int | None:
    return decimal(request.headers.get("content-length"))


@router.put(
    "/api/vms/{vm_id}/files",
    openapi_extra=UPLOAD_BODY,
    responses={
        413: {
            **error_responses(413)[413],
            "description": "Over HEARTH_FILES_MAX_BYTES (file_too_large), nothing kept; or a body "
            "declared over it, refused unread",
        },
        507: {
            "model": ErrorOut,
            "description": "The VM's disk has no room left for it (insufficient_storage; the "
            "message says where), nothing kept",
            "content": {"application/json": {}},
        },
    },
)
async def put_file(
    vm_id: str,
    request: Request,
    key: Key,
    ctl: Ctl,
    path: PathQuery,
    mode: Annotated[
        str | None,
        Query(pattern=r"^0?[0-7]{3}$", description="the file's mode, octal (default: kept, 0644)"),
    ] = None,
) -> FileWritten:
    """Write a file atomically (or extract a tar into a directory) in the CLI VM's workspace;
    missing parent directories are made. Nothing is kept of an upload that fails (507 when the
    VM's disk is full)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload = FileUpload(
        chunks=_client_body(request),
        archive=media == TAR_MEDIA_TYPE,
        declared=_declared_length(request),
        mode=mode,
    )
    written = await ctl.files.write(vm_id, scope_of(key), path, upload)
    _log.info("file_written", vm_id=vm_id, user_id=key.user_id, type=written.get("type"))
    return FileWritten.model_validate(written)


async def _relay(
    files: FileService, vm_id: str, download: AgentDownload, holds: KeyHolds
) -> AsyncIterator[bytes]:
    """The download's bytes while its key holds; one that breaks off (or whose key is revoked)
    ends the response unfinished (a file short of its Content-Length, a chunked tar without its
    last chunk), never as if whole."""
    try:
        async for chunk in guarded(files.stream(vm_id, download), holds, binary=True):
            yield chunk
    except HearthError as exc:
        _log.warning("file_download_broken", code=exc.code, error=exc.message[:300])
        raise
    finally:
        await download.aclose()


@router.get(
    "/api/vms/{vm_id}/files",
    response_model=None,
    response_class=StreamingResponse,
    responses=DOWNLOAD_RESPONSE,
)
async def get_file(vm_id: str, key: Key, ctl: Ctl, path: PathQuery = "") -> Response:
    """The file at ``path``, or a tar of the directory there (the whole workspace by default),
    streamed from the CLI VM."""
    download = await ctl.files.read(vm_id, scope_of(key), path)
    headers = {FILE_TYPE_HEADER: download.kind, "Cache-Control": "no-store"}
    if download.size is not None:
        headers["Content-Length"] = str(download.size)
    return StreamingResponse(
        _relay(ctl.files, vm_id, download, key_holds(ctl.store, key)),
        media_type=TAR_MEDIA_TYPE if download.kind == "dir" else FILE_MEDIA_TYPE,
        headers=headers,
        # Also when the client is gone before the first byte: the agent's connection goes.
        background=BackgroundTask(download.aclose),
    )


@router.delete("/api/vms/{vm_id}/files")
async def delete_file(
    vm_id: str,
    key: Key,
    ctl: Ctl,
    path: PathQuery,
    recursive: Annotated[
        bool, Query(description="also a directory with something in it (else 409)")
    ] = False,
) -> FileRemoved:
    """Remove a file, a symlink (itself) or a directory from the CLI VM's workspace."""
    removed = await ctl.files.remove(vm_id, scope_of(key), path, recursive=recursive)
    return FileRemoved.model_validate(removed)


@router.get("/api/vms/{vm_id}/files/list")
async def list_files(vm_id: str, key: Key, ctl: Ctl, path: PathQuery = "") -> FileListing:
    """The entries of a directory of the CLI VM's workspace (the workspace by default)."""
    return FileListing.model_validate(await ctl.files.list(vm_id, scope_of(key), path))

"""``vm.files``: the files of a CLI VM's workspace, streamed both ways (``Files``, and
``AsyncFiles`` for ``AsyncVm``).

Paths are relative to the VM's workspace. Nothing is held whole in memory unless asked for
(``read``): ``write`` sends a file or a directory (as a tar) as it reads it, ``read_stream``
and ``download`` hand the bytes on as they arrive. What comes down comes from the guest: each
read takes at most ``max_bytes`` of it (16 GiB unless given; None: no bound), counted as it
arrives (``_transfer.DownloadCap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Protocol, TypeVar
from urllib.parse import quote

import httpx

from hearth.sdk._archive import extract_tar
from hearth.sdk._calls import Call
from hearth.sdk._config import ClientConfig
from hearth.sdk._errors import HearthConnectionError, transport_text
from hearth.sdk._transfer import (
    MAX_DOWNLOAD_BYTES,
    ChunkReader,
    DownloadCap,
    FileEntry,
    FileWritten,
    Progress,
    Upload,
    WriteSource,
    answer_kind,
    counted,
    replacing,
    upload_of,
)

T = TypeVar("T")
# A transfer waits this long for a chunk either way (the VM syncs a large file before it answers).
TRANSFER_TIMEOUT_S = 600.0


class _SyncHttp(Protocol):
    config: ClientConfig

    @property
    def client(self) -> httpx.Client: ...

    def call(self, call: Call[T]) -> T: ...


class _AsyncHttp(Protocol):
    config: ClientConfig

    @property
    def client(self) -> httpx.AsyncClient: ...

    async def call(self, call: Call[T]) -> T: ...


def _files_path(vm_id: str, suffix: str = "") -> str:
    return f"/api/vms/{quote(vm_id, safe='')}/files{suffix}"


def _list_call(vm_id: str, path: str) -> Call[list[FileEntry]]:
    return Call(
        "GET",
        _files_path(vm_id, "/list"),
        lambda body: [FileEntry.from_wire(entry) for entry in body["entries"]],
        params={"path": path},
    )


def _remove_call(vm_id: str, path: str, recursive: bool) -> Call[None]:
    params = {"path": path, "recursive": "true" if recursive else "false"}
    return Call("DELETE", _files_path(vm_id), lambda body: None, params=params)


def _written(vm_id: str, answer: httpx.Response) -> FileWritten:
    """What a write's answer says was written (HearthApiError for an error, or a body that is
    not the API's)."""
    call = Call("PUT", _files_path(vm_id), FileWritten.from_wire)
    return call.result(answer.status_code, answer.content)


@contextlib.contextmanager
def _answered(config: ClientConfig, method: str) -> Iterator[None]:
    """Around a transfer's request (or its answer read): one that gets no answer raises the
    SDK's error for it, never httpx's."""
    try:
        yield
    except httpx.TransportError as exc:
        raise HearthConnectionError.of_transport(config.url, method, exc) from exc


@contextlib.contextmanager
def _arriving() -> Iterator[None]:
    """Around a download's bytes as they arrive: a break raises the SDK's ``stream_broken``,
    never httpx's error."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise HearthConnectionError(
            "stream_broken", f"the download broke off: {transport_text(exc)}"
        ) from exc


def _timeout(config: ClientConfig) -> httpx.Timeout:
    return httpx.Timeout(config.timeout_s, read=TRANSFER_TIMEOUT_S, write=TRANSFER_TIMEOUT_S)


def _write_request(
    http: _SyncHttp | _AsyncHttp,
    vm_id: str,
    upload: Upload,
    content: bytes | Iterator[bytes] | AsyncIterator[bytes],
) -> httpx.Request:
    """The PUT that writes ``upload``, its bytes sent as ``content``."""
    return http.client.build_request(
        "PUT",
        _files_path(vm_id),
        content=content,
        headers=upload.headers,
        params=upload.params,
        timeout=_timeout(http.config),
    )


def _read_request(http: _SyncHttp | _AsyncHttp, vm_id: str, path: str) -> httpx.Request:
    """The GET that reads the file (or a tar of the directory) at ``path``."""
    return http.client.build_request(
        "GET", _files_path(vm_id), params={"path": path}, timeout=_timeout(http.config)
    )


def _local_target(path: str, local: Path, kind: str) -> Path:
    """Where a download goes: into ``local`` if it is a directory and the remote is a file."""
    if kind == "file" and local.is_dir():
        return local / (PurePosixPath(path).name or "download")
    return local


class _Download:
    """What a download in progress shows whichever client reads it: ``kind`` (``file``, or
    ``dir`` for a tar of one) and ``size`` (a file's); its bytes, at most ``max_bytes``, are
    counted as they arrive."""

    def __init__(
        self, response: httpx.Response, kind: str, path: str, max_bytes: int | None
    ) -> None:
        self._response = response
        self.kind = kind
        length = response.headers.get("content-length")
        self.size = int(length) if kind == "file" and length is not None else None
        what = "the download's tar" if kind == "dir" else "the file"
        self._cap = DownloadCap(path, max_bytes, what)

    def _saved_to(self, target: Path) -> DownloadCap:
        """The bound of this download, its refusals naming ``target``, where it is saved."""
        self._cap.target = target
        return self._cap

    def _declared(self) -> None:
        """Refuse, before any of its body is read, a file whose declared size is past the
        bound (what arrives is counted all the same)."""
        if self.size is not None:
            self._cap.declare(self.size)


class FileStream(_Download):
    """A download in progress: ``kind`` (``file``, or ``dir`` for a tar of one), ``size`` (a
    file's), and its bytes by iterating it (``InvalidArchive`` past ``max_bytes``). Use it in a
    ``with`` block."""

    def __iter__(self) -> Iterator[bytes]:
        self._declared()
        with _arriving():
            for chunk in self._response.iter_raw():
                self._cap.arrive(chunk)
                yield chunk

    def __enter__(self) -> FileStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._response.close()


class AsyncFileStream(_Download):
    """``FileStream`` for ``async for`` and ``async with``."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._declared()
        with _arriving():
            async for chunk in self._response.aiter_raw():
                self._cap.arrive(chunk)
                yield chunk

    async def __aenter__(self) -> AsyncFileStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._response.aclose()


class Files:
    """``vm.files``: write, read, list and remove files in the VM's workspace."""

    def __init__(self, http: _SyncHttp, vm_id: str) -> None:
        self._http = http
        self._vm_id = vm_id

    def write(
        self,
        path: str,
        data: WriteSource,
        *,
        mode: int | None = None,
        progress: Progress | None = None,
    ) -> FileWritten:
        """Write ``data`` (bytes, a binary file, chunks, or a ``Path``: a file, or a directory,
        sent as a tar and unpacked into the directory ``path``) atomically; ``mode`` defaults to
        a local file's own, else the replaced file's, else 0644. A local file goes as long as
        it was when the write began (LocalFileChanged if it shrinks meanwhile); a pipe, FIFO or
        /proc file is read to its end."""
        upload = upload_of(path, data, mode=mode, progress=progress)
        with contextlib.closing(upload), _answered(self._http.config, "PUT"):
            request = _write_request(self._http, self._vm_id, upload, upload.content)
            answer = self._http.client.send(request)
        return _written(self._vm_id, answer)

    @contextlib.contextmanager
    def read_stream(
        self, path: str, *, max_bytes: int | None = MAX_DOWNLOAD_BYTES
    ) -> Iterator[FileStream]:
        """The file at ``path`` (or a tar of the directory there) as its bytes arrive, at most
        ``max_bytes`` of them (16 GiB unless given; None: no bound): past it, or with a size
        declared past it, iterating raises ``InvalidArchive``."""
        request = _read_request(self._http, self._vm_id, path)
        with _answered(self._http.config, "GET"):
            response = self._http.client.send(request, stream=True)
        with contextlib.closing(response):
            with _answered(self._http.config, "GET"):
                content = response.read() if not response.is_success else None
            kind = answer_kind(response.status_code, response.headers, content)
            with FileStream(response, kind, path, max_bytes) as stream:
                yield stream

    def read(self, path: str, *, max_bytes: int | None = MAX_DOWNLOAD_BYTES) -> bytes:
        """The whole file at ``path`` (a directory's comes as a tar), at most ``max_bytes``
        (16 GiB unless given; None: no bound), else ``InvalidArchive``."""
        with self.read_stream(path, max_bytes=max_bytes) as stream:
            return b"".join(stream)

    def download(
        self,
        path: str,
        local: Path,
        *,
        progress: Progress | None = None,
        max_bytes: int | None = MAX_DOWNLOAD_BYTES,
    ) -> Path:
        """Save the file at ``path`` to ``local`` (into it, if it is a directory), or unpack
        the directory at ``path`` into directory ``local``; where it went. Either is all or
        nothing; a tar member that would write outside ``local``, or a file or a tar of more
        than ``max_bytes`` (16 GiB unless given; None: no bound), refuses the whole download
        (``InvalidArchive``), and a file already at ``local`` stays as it was."""
        with self.read_stream(path, max_bytes=max_bytes) as stream:
            target = _local_target(path, local, stream.kind)
            cap = stream._saved_to(target)
            chunks: Iterator[bytes] = iter(stream)
            if progress is not None:
                chunks = counted(chunks, progress)
            if stream.kind == "dir":
                extract_tar(ChunkReader(chunks), target, cap)
            else:
                with replacing(target) as handle:
                    handle.writelines(chunks)
        return target

    def list(self, path: str = ".") -> list[FileEntry]:
        """The entries of the directory at ``path`` (the one entry of a file)."""
        return self._http.call(_list_call(self._vm_id, path))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove the file, symlink or directory at ``path`` (one with anything in it only
        when ``recursive``)."""
        self._http.call(_remove_call(self._vm_id, path, recursive))


class AsyncFiles:
    """``vm.files`` of an ``AsyncVm``: as ``Files``, with coroutines."""

    def __init__(self, http: _AsyncHttp, vm_id: str) -> None:
        self._http = http
        self._vm_id = vm_id

    async def write(
        self,
        path: str,
        data: WriteSource,
        *,
        mode: int | None = None,
        progress: Progress | None = None,
    ) -> FileWritten:
        """Write ``data`` as ``Files.write`` does; local files are read on a worker thread."""
        upload = upload_of(path, data, mode=mode, progress=progress)
        content: bytes | AsyncIterator[bytes] = (
            upload.content if isinstance(upload.content, bytes) else _off_thread(upload.content)
        )
        with contextlib.closing(upload), _answered(self._http.config, "PUT"):
            request = _write_request(self._http, self._vm_id, upload, content)
            answer = await self._http.client.send(request)
        return _written(self._vm_id, answer)

    @contextlib.asynccontextmanager
    async def read_stream(
        self, path: str, *, max_bytes: int | None = MAX_DOWNLOAD_BYTES
    ) -> AsyncIterator[AsyncFileStream]:
        """As ``Files.read_stream``: at most ``max_bytes`` (None: no bound)."""
        request = _read_request(self._http, self._vm_id, path)
        with _answered(self._http.config, "GET"):
            response = await self._http.client.send(request, stream=True)
        async with contextlib.aclosing(response):
            with _answered(self._http.config, "GET"):
                content = await response.aread() if not response.is_success else None
            kind = answer_kind(response.status_code, response.headers, content)
            async with AsyncFileStream(response, kind, path, max_bytes) as stream:
                yield stream

    async def read(self, path: str, *, max_bytes: int | None = MAX_DOWNLOAD_BYTES) -> bytes:
        """As ``Files.read``: at most ``max_bytes`` (None: no bound)."""
        async with self.read_stream(path, max_bytes=max_bytes) as stream:
            return b"".join([chunk async for chunk in stream])

    async def download(
        self,
        path: str,
        local: Path,
        *,
        progress: Progress | None = None,
        max_bytes: int | None = MAX_DOWNLOAD_BYTES,
    ) -> Path:
        """As ``Files.download``; a directory's tar is spooled to a temporary file (at most
        ``max_bytes`` of it), then unpacked on a worker thread."""
        async with self.read_stream(path, max_bytes=max_bytes) as stream:
            target = _local_target(path, local, stream.kind)
            cap = stream._saved_to(target)
            if stream.kind == "dir":
                with tempfile.TemporaryFile() as spool:
                    await _save(stream, spool, progress)
                    spool.seek(0)
                    await asyncio.to_thread(extract_tar, spool, target, cap)
                return target
            with replacing(target) as handle:
                await _save(stream, handle, progress)
        return target

    async def list(self, path: str = ".") -> list[FileEntry]:
        """The entries of the directory at ``path`` (the one entry of a file)."""
        return await self._http.call(_list_call(self._vm_id, path))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove the file, symlink or directory at ``path`` (``recursive`` for a full one)."""
        await self._http.call(_remove_call(self._vm_id, path, recursive))


async def _save(stream: AsyncFileStream, handle: IO[bytes], progress: Progress | None) -> None:
    """Write ``stream`` (counted by its bound as it arrives) to ``handle``."""
    done = 0
    async for chunk in stream:
        await asyncio.to_thread(handle.write, chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)


async def _off_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Chunks read (from disk) on a worker thread, so the event loop runs on meanwhile."""
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk

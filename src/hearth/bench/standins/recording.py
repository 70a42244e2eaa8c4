"""``RecordedRequest``: what a stand-in saw of one request, for tests (and a bench) to read."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection, Request

from hearth.bench.errors import BenchError

# Headers whose values are secrets; ``RecordedRequest.safe_headers`` leaves them out.
SECRET_HEADERS = frozenset({"authorization", "x-goog-api-key", "x-api-key", "cookie"})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received: who it was for, where, with which bearer and body."""

    method: str
    host: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @classmethod
    async def read(cls, request: Request) -> RecordedRequest:
        """Read ``request`` whole, its body decoded if it came compressed (codex sends its
        Responses requests zstd-compressed)."""
        body = await decode_body(await request.body(), request.headers.get("content-encoding"))
        opening = cls.handshake(request)
        return cls(
            method=request.method,
            host=opening.host,
            path=opening.path,
            query=opening.query,
            headers=opening.headers,
            body=body,
        )

    @classmethod
    def handshake(cls, connection: HTTPConnection) -> RecordedRequest:
        """A WebSocket's opening request (``GET`` with an upgrade), which has no body."""
        return cls(
            method="GET",
            host=connection.headers.get("host", "").rsplit(":", 1)[0],
            path=connection.url.path,
            query=connection.url.query,
            headers={name.lower(): value for name, value in connection.headers.items()},
            body=b"",
        )

    def message(self, text: str) -> RecordedRequest:
        """A message received on the WebSocket this handshake opened (method ``WEBSOCKET``)."""
        return RecordedRequest(
            method="WEBSOCKET",
            host=self.host,
            path=self.path,
            query=self.query,
            headers=self.headers,
            body=text.encode(),
        )

    @property
    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer`` header, or None."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    @property
    def safe_headers(self) -> dict[str, str]:
        """The headers without the ones that carry secrets."""
        return {k: v for k, v in self.headers.items() if k not in SECRET_HEADERS}

    def json(self) -> Any:
        """The body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None

    def describe(self) -> str:
        """``METHOD host/path?query``: one line for a failure message."""
        query = f"?{self.query}" if self.query else ""
        return f"{self.method} {self.host}{self.path}{query}"


class UndecodableBody(BenchError):
    """A request body in a content encoding the stand-in cannot decode."""

    code = "undecodable_body"
    http_status = 500


async def decode_body(body: bytes, encoding: str | None) -> bytes:
    """``body`` without its ``Content-Encoding``: identity, gzip, or zstd (through the ``zstd``
    program: Python 3.11 has no zstd module and the project carries no zstd package)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity" or not body:
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding != "zstd":
        raise UndecodableBody(f"content-encoding {encoding!r}")
    program = shutil.which("zstd")
    if program is None:
        raise UndecodableBody("a zstd body, and no zstd program to decode it (apt install zstd)")
    process = await asyncio.create_subprocess_exec(
        program,
        "-dcq",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(body)
    if process.returncode != 0:
        raise UndecodableBody(f"zstd -d failed: {err.decode(errors='replace').strip()}")
    return out

"""A file, or a directory's tar, streaming from a VM's agent to the controller."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from hearth.agent_client import AgentClient


@dataclass
class AgentDownload:
    """A file (``kind`` ``file``, ``size`` bytes) or a directory's tar (``dir``) streaming from
    an agent; its bytes come from ``chunks()``, and ``aclose()`` lets the connection go."""

    kind: str
    size: int | None
    content_type: str
    agent: AgentClient
    _response: httpx.Response
    _opened: contextlib.AsyncExitStack

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes as they arrive; AgentError if the stream breaks off before its end."""
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise self.agent.error(
                f"{self.agent.name}: the download broke off ({type(exc).__name__})"
            ) from exc

    async def aclose(self) -> None:
        """Close the response and its client; idempotent."""
        await self._opened.aclose()

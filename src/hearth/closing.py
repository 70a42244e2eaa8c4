"""``Closing``: ``async with`` for the objects that hold a resource until ``close()`` (a store's
connection pool, a proxy's listening socket, a VMM API connection)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """``async with obj`` runs ``obj.start()`` and, however the body ends, ``obj.close()``."""

    async def start(self) -> None:
        """Acquire what ``close`` releases; nothing by default (the constructor did)."""

    async def close(self) -> None:
        """Release everything; safe to call more than once."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave(exc)

    async def leave(self, exc: BaseException | None) -> None:
        """End the ``async with`` whose body raised ``exc`` (None: it did not): ``close()``."""
        await self.close()

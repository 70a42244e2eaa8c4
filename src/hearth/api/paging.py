"""The query parameters of a listing read a page at a time (keyset paging, oldest first)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

PAGE_LIMIT_DEFAULT = 100

After = Annotated[
    str | None,
    Query(min_length=1, max_length=128, description="`nextAfter` of the page before"),
]


def limit_of(what: str) -> object:
    """The ``limit`` parameter of a listing of ``what``: 1 to 1000 per page."""
    return Query(ge=1, le=1000, description=f"{what} per page at most")

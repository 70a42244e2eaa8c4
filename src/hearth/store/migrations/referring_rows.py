"""Rows set aside while SQLite rebuilds the table they refer to, inside the migrations' transaction.

Alembic's batch mode rebuilds a SQLite table by filling a new one under another name, dropping
the old one and renaming the new. The store migrates in one transaction with foreign keys on
(``PRAGMA foreign_keys`` cannot change inside it), so dropping a table that rows still refer to
fails; deferring the checks does not help either, because the rename does not clear the
violations the drop counted. So the referring rows wait in temporary copies, their tables empty,
while the table is rebuilt, and go back once it is there again under its own name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import op

_SUFFIX = "_set_aside"


@contextmanager
def rows_set_aside(*tables: str) -> Iterator[None]:
    """Empty ``tables`` into temporary copies on SQLite, and fill them again on leaving.

    ``tables`` are the ones with a foreign key to the table rebuilt inside the block (a
    migration names them as they are at its revision); none of them may be referred to itself.
    PostgreSQL alters tables in place, so nothing moves there.
    """
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    for table in tables:
        op.execute(f"CREATE TEMPORARY TABLE {table}{_SUFFIX} AS SELECT * FROM {table}")  # noqa: S608
        op.execute(f"DELETE FROM {table}")  # noqa: S608
    yield
    for table in tables:
        op.execute(f"INSERT INTO {table} SELECT * FROM temp.{table}{_SUFFIX}")  # noqa: S608
        op.execute(f"DROP TABLE temp.{table}{_SUFFIX}")

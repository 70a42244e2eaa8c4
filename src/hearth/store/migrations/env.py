"""Alembic environment: runs migrations on the connection ``hearth.store.migrate`` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from hearth.errors import ConfigError
from hearth.store.models import Base


def run_migrations(connection: Connection) -> None:
    """Run the pending migrations inside the caller's transaction."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise ConfigError("offline (--sql) migrations are not supported; open the store instead")
connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise ConfigError("migrations run through hearth.store (Store.open), not the alembic CLI")
run_migrations(connection)

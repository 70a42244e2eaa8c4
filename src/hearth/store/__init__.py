"""Hearth's persistent store: async SQLAlchemy on SQLite (default) or PostgreSQL, via Alembic.

``Store.open(url)`` migrates the database and exposes one repository per table; repositories
return frozen records and move statuses by compare-and-set.
"""

from __future__ import annotations

from hearth.store.database import Store, create_store_engine, default_sqlite_url, normalise_url
from hearth.store.migrate import alembic_config, current_revision, upgrade_to_head
from hearth.store.records import (
    INACTIVE_VM_STATES,
    ApiKeyRecord,
    AuthSessionRecord,
    CredentialRecord,
    CredentialSource,
    UserRecord,
    VmRecord,
    utc_now,
)
from hearth.store.repositories import Clock

__all__ = [
    "INACTIVE_VM_STATES",
    "ApiKeyRecord",
    "AuthSessionRecord",
    "Clock",
    "CredentialRecord",
    "CredentialSource",
    "Store",
    "UserRecord",
    "VmRecord",
    "alembic_config",
    "create_store_engine",
    "current_revision",
    "default_sqlite_url",
    "normalise_url",
    "upgrade_to_head",
    "utc_now",
]

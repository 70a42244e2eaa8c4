"""Alembic migrations of the store's schema (run in-process by ``hearth.store.migrate``)."""

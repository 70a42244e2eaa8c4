"""Opening the control plane's store (migrated, with its API-key hash secret) and making sure
an admin key exists."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from hearth.config import Settings
from hearth.credentials.keys import load_key_hash_secret
from hearth.logging import get_logger
from hearth.store import Store

_log = get_logger("control.bootstrap")
ADMIN_USER = "admin"
ADMIN_KEY_FILE = "admin.key"


async def open_store(settings: Settings) -> Store:
    """The controller's store: its state dir made private, the schema migrated, and the
    API-key hash secret loaded (``HEARTH_KEY_HASH_SECRET`` or the state dir's file)."""
    settings.prepare_state_dir()
    secret = load_key_hash_secret(settings.state_dir, settings.key_hash_secret)
    return await Store.open(settings.database(), key_secret=secret)


async def ensure_admin_key(store: Store, settings: Settings) -> Path | None:
    """Import ``HEARTH_ADMIN_KEY``, or make sure ``admin.key`` holds a working admin key.

    On first start a key is minted into a new 0600 file. A stale file (its key revoked, or
    written for another database) never stops the controller: a new admin key replaces it, and
    the log says so. Returns the file's path, or None when no file is in use.
    """
    if settings.admin_key:
        imported = await store.api_keys.import_key(
            settings.admin_key, user_id=ADMIN_USER, admin=True
        )
        if imported.is_revoked:  # it stays so: the operator must know it opens nothing
            _log.warning(
                "admin_key_revoked",
                key_id=imported.id,
                reason="HEARTH_ADMIN_KEY was revoked and authenticates nothing; set a new one",
            )
        return None
    path = settings.state_dir / ADMIN_KEY_FILE
    if path.exists():
        record = await store.api_keys.authenticate(path.read_text().strip())
        if record is not None and record.is_admin and not record.is_revoked:
            return path
        stale = True
    elif any(k.is_admin and not k.is_revoked for k in await store.api_keys.list()):
        return None  # admin keys exist and the operator removed the file: nothing to write
    else:
        stale = False
    plaintext, record = await store.api_keys.create(ADMIN_USER, admin=True)
    _write_private(path, plaintext + "\n")
    if stale:
        _log.warning(
            "admin_key_replaced",
            path=str(path),
            key_id=record.id,
            reason="the key in the file is revoked or unknown to this database",
        )
    else:
        _log.info("admin_key_created", path=str(path), key_id=record.id)
    return path


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file holding ``text``."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

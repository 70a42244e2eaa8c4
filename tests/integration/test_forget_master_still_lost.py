"""``forget_master_key`` when another lost key seals something too, on SQLite and PostgreSQL:
what it finds still sealed under keys not at hand (the vault's ``unopenable``) is in its report,
by kind and key id (the vault's ``describe_sealed``), and the controller still refuses to start.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from pathlib import Path

from hearth.config import Settings
from hearth.credentials.forget import forget_master_key, what_is_lost
from hearth.credentials.keys import key_id_of
from hearth.events.log import EventLog
from hearth.metrics import ControllerMetrics
from hearth.store import Store
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import running_api
from tests.integration.test_forget_master import _seal_everything, settings  # noqa: F401


async def test_what_another_lost_key_seals_is_named_and_the_controller_still_refuses(
    settings: Settings,  # noqa: F811
    tmp_path: Path,
    make_document: Callable[..., dict[str, object]],
) -> None:
    sealed = await _seal_everything(settings, tmp_path, make_document)
    raw = secrets.token_bytes(32)
    newer = settings.with_overrides(master_key=base64.b64encode(raw).decode())
    async with running_api(newer, sealed.backend, tmp_path / "image") as api:  # both at hand
        document = make_document("claude_code", marker="forget-newer")
        await api.ctl.credentials.capture("ann", "claude_code", json.dumps(document).encode())
    (settings.state_dir / "master.key").unlink()  # the first key lost; the newer one not at hand
    store = await Store.open(settings.database())
    try:
        lost = await what_is_lost(store, sealed.key_id, keys=())
        events = EventLog(store=store, settings=settings, metrics=ControllerMetrics())
        forgotten = await forget_master_key(store, lost, keys=(), events=events)
    finally:
        await store.close()

    assert forgotten.still_lost == {"credential": {key_id_of(raw): 1}}
    assert forgotten.lines()[-1] == (
        "the controller still refuses to start: other secrets are sealed under master keys not "
        f"at hand: 1 credential (1 under key {key_id_of(raw)}); restore those keys, or forget "
        "them too with `hearth keys forget-master`"
    )

"""The API boundary, in process on SQLite and PostgreSQL: keys before bodies, capped bodies,
private state files, a stale admin.key, and races on start and destroy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from hearth.config import Settings
from hearth.control.bootstrap import ADMIN_KEY_FILE
from hearth.store import VmRecord
from hearth.vm.types import VmState
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api

MIB = 1024 * 1024


def error_of(response: httpx.Response) -> dict[str, str]:
    """The ``{"code", "message"}`` of an error response, checking the shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    error = body["error"]
    assert isinstance(error, dict)
    return error


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An ASGI HTTP scope, for driving the app with a receive we can watch."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("hearth.test", 80),
    }


async def start_login(api: Api, key: str) -> httpx.Response:
    """``POST /api/auth/start`` for the key's user (claude_code)."""
    return await api.client.post(
        "/api/auth/start", json={"provider": "claude_code"}, headers=api.headers(key)
    )


async def cancel_login(api: Api, key: str, session_id: str) -> None:
    """Cancel a session that is in progress."""
    response = await api.client.post(
        f"/api/auth/session/{session_id}/cancel", headers=api.headers(key)
    )
    assert response.status_code == 200, response.text


# --- bodies: the key first, then at most max_body_bytes ------------------------------------------


@pytest.mark.parametrize("key", [None, "hk_not-a-key-that-exists-anywhere"])
async def test_a_body_without_a_valid_key_is_refused_401_before_a_byte_is_read(
    api: Api, key: str | None
) -> None:
    chunks_read = 0

    async def receive() -> dict[str, Any]:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b"[" * MIB, "more_body": chunks_read < 50}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % (50 * MIB))]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    await api.app(http_scope("POST", "/api/vms", headers), receive, send)

    assert sent[0]["status"] == 401
    assert chunks_read == 0


async def test_a_50_mib_body_without_a_key_gets_401_and_health_stays_responsive(api: Api) -> None:
    upload = asyncio.create_task(api.client.post("/api/vms", content=b"[" * (50 * MIB)))
    health = await asyncio.wait_for(api.client.get("/health"), 2.0)
    response = await asyncio.wait_for(upload, 5.0)

    assert health.status_code == 200
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


async def test_a_declared_body_over_the_limit_is_413_with_a_key(api: Api) -> None:
    response = await api.client.post("/api/vms", content=b" " * (MIB + 1), headers=api.headers())
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "body_too_large"
    assert str(MIB) in error["message"]


async def test_a_streamed_body_over_the_limit_is_413_with_a_key(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * (MIB // 2 + 1)

    response = await api.client.post("/api/vms", content=chunks(), headers=api.headers())
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"


async def test_a_body_at_the_limit_is_read_and_validated(api: Api) -> None:
    body = b'{"userId": "u1"}'
    padded = body + b" " * (MIB - len(body))
    response = await api.client.post(
        "/api/vms",
        content=padded,
        headers={**api.headers(), "content-type": "application/json"},
    )
    assert response.status_code == 201, response.text


def test_the_body_limit_is_a_setting() -> None:
    assert Settings.from_env({}).max_body_bytes == MIB
    assert Settings.from_env({"HEARTH_MAX_BODY_BYTES": "4096"}).max_body_bytes == 4096


# --- the state dir -----------------------------------------------------------------------------


async def test_an_existing_state_dir_and_its_files_are_made_private(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    state = api_settings.state_dir
    state.mkdir(mode=0o755)
    state.chmod(0o755)  # as setup.sh and image builds leave it (umask 022)
    loose = {name: state / name for name in ("controller.log", "hearth.db", "master.key")}
    for path in loose.values():
        path.touch(mode=0o644)
        path.chmod(0o644)
    loose["master.key"].write_text(base64.b64encode(os.urandom(32)).decode() + "\n")

    async with running_api(api_settings, fake_backend, tmp_path / "image") as running:
        assert (await running.client.get("/health")).status_code == 200

    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    private = [p for p in state.iterdir() if p.is_file()]
    assert {p.name for p in private} >= {"controller.log", "master.key", ADMIN_KEY_FILE}
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# --- a stale admin.key -------------------------------------------------------------------------


async def test_a_stale_admin_key_file_on_a_fresh_database_is_replaced(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    api_settings.state_dir.mkdir(mode=0o700)
    stale = "hk_" + "s" * 43
    (api_settings.state_dir / ADMIN_KEY_FILE).write_text(stale + "\n")

    async with running_api(api_settings, fake_backend, tmp_path / "image") as running:
        assert running.admin_key != stale
        response = await running.client.get("/api/keys", headers=running.headers())
        assert response.status_code == 200
        old = await running.client.get("/api/keys", headers=running.headers(stale))
        assert old.status_code == 401


async def test_a_revoked_admin_key_file_is_replaced_at_the_next_start(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    async with running_api(api_settings, fake_backend, tmp_path / "image") as first:
        revoked = first.admin_key
        [record] = (await first.client.get("/api/keys", headers=first.headers())).json()["keys"]
        response = await first.client.delete(f"/api/keys/{record['id']}", headers=first.headers())
        assert response.status_code == 200

    async with running_api(api_settings, fake_backend, tmp_path / "image") as second:
        assert second.admin_key != revoked
        assert (await second.client.get("/api/keys", headers=second.headers())).status_code == 200


# --- races -------------------------------------------------------------------------------------


async def test_ten_concurrent_deletes_all_succeed_and_tear_down_once(api: Api) -> None:
    created = await api.client.post("/api/vms", json={"userId": "u1"}, headers=api.headers())
    assert created.status_code == 201
    vm_id = created.json()["id"]
    hooks: list[str] = []

    async def slow_hook(record: VmRecord, token: str | None) -> None:
        hooks.append(record.id)
        await asyncio.sleep(0.05)  # what a pull-back over the network takes, roughly

    # The pull-back hook (wired by the composition root) stays; this one joins it.
    api.ctl.vms.before_destroy = (*api.ctl.vms.before_destroy, slow_hook)
    responses = await asyncio.gather(
        *(api.client.delete(f"/api/vms/{vm_id}", headers=api.headers()) for _ in range(10))
    )

    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    assert {r.json()["status"] for r in responses} == {"destroyed"}
    assert hooks == [vm_id]
    assert api.backend.destroyed == [vm_id]
    again = await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())
    assert again.status_code == 200
    assert hooks == [vm_id]


async def test_a_destroy_whose_caller_was_cancelled_ends_before_the_vm_service_stops(
    api: Api,
) -> None:
    # A login stopped by a shutdown leaves the destroy of what it made running: the VM service
    # must see it through before the store closes under it.
    created = await api.client.post("/api/vms", json={"userId": "u1"}, headers=api.headers())
    vm_id = created.json()["id"]
    hooked = asyncio.Event()

    async def slow_hook(record: VmRecord, token: str | None) -> None:
        hooked.set()
        await asyncio.sleep(0.3)

    api.ctl.vms.before_destroy = (*api.ctl.vms.before_destroy, slow_hook)
    caller = asyncio.create_task(api.ctl.vms.destroy(vm_id))
    await hooked.wait()
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    await api.ctl.vms.shutdown(destroy_vms=False)
    assert (await api.ctl.store.vms.get(vm_id)).status is VmState.DESTROYED


async def test_rounds_of_fifty_concurrent_starts_that_fail_fast_all_get_a_session(
    api: Api,
) -> None:
    # The fake CLI VM has no agent, so each session fails within milliseconds: a start that
    # loses the race often finds the winner ended before it can read it.
    key = await api.user_key("alice")
    statuses: list[int] = []
    for _ in range(6):
        responses = await asyncio.gather(*(start_login(api, key) for _ in range(50)))
        statuses += [r.status_code for r in responses]
        assert all(r.json()["sessionId"].startswith("auth-") for r in responses)
    assert Counter(statuses) == {202: 300}


async def test_fifty_concurrent_starts_get_the_one_active_session(api: Api) -> None:
    api.backend.hold = asyncio.Event()  # the CLI VM keeps booting: the session stays active
    key = await api.user_key("alice")
    try:
        responses = await asyncio.gather(*(start_login(api, key) for _ in range(50)))
        assert [r.status_code for r in responses] == [202] * 50, {r.text for r in responses}
        ids = {r.json()["sessionId"] for r in responses}
        assert len(ids) == 1
        [session_id] = ids
        await cancel_login(api, key, session_id)
    finally:
        api.backend.hold.set()


# --- secrets in the store ----------------------------------------------------------------------


async def test_the_view_link_is_shown_once_by_start_and_never_stored(api: Api) -> None:
    api.backend.hold = asyncio.Event()  # the session stays in progress
    key = await api.user_key("alice")
    try:
        first = await start_login(api, key)
        assert first.status_code == 202
        session_id, view_url = first.json()["sessionId"], first.json()["viewUrl"]
        token = view_url.split("token=", 1)[1]
        assert view_url == f"/view/{session_id}?token={token}"
        assert len(token) >= 32

        again = await start_login(api, key)
        assert again.json()["sessionId"] == session_id
        assert again.json()["viewUrl"] is None
        listed = await api.client.get("/api/auth/sessions", headers=api.headers(key))
        one = await api.client.get(f"/api/auth/session/{session_id}", headers=api.headers(key))
        for response in (listed, one):
            assert response.status_code == 200
            assert token not in response.text
        async with api.ctl.store.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM auth_sessions"))).all()
        assert rows
        assert token not in str(rows)

        # The link still works: the token's hash is all the view needs.
        view = await api.client.get(view_url, follow_redirects=False)
        assert view.status_code == 302
        await cancel_login(api, key, session_id)
    finally:
        api.backend.hold.set()


async def test_api_keys_in_the_store_are_not_their_bare_sha256(api: Api) -> None:
    user_key = await api.user_key("alice")
    async with api.ctl.store.engine.connect() as conn:
        stored = {row[0] for row in await conn.execute(text("SELECT key_hash FROM api_keys"))}
    assert len(stored) == 2
    for key in (api.admin_key, user_key):
        assert hashlib.sha256(key.encode()).hexdigest() not in stored
        assert key not in str(stored)
    assert (await api.client.get("/api/vms", headers=api.headers(user_key))).status_code == 200

"""Webhooks whose receiver or URL misbehaves hold no other webhook back.

In process over the fake backend, receivers on loopback: a stored URL that httpx cannot even
send to (as an older controller could store one) and a receiver that trickles its answer
forever each get a failed attempt with the reason, while a good receiver gets its events; the
backlog gauge counts what is owed meanwhile. URLs that cannot be sent are refused at creation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from hearth.config import Settings
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.webhook_receiver import *  # noqa: F403
from tests.webhook_receiver import WebhookReceiver


@pytest.fixture
async def api_hooks(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    settings = api_settings.with_overrides(
        webhook_allow_private=True, webhook_backoff_s=0.05, webhook_timeout_s=1.0
    )
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        yield api


@contextlib.asynccontextmanager
async def trickling_receiver() -> AsyncIterator[str]:
    """A receiver that starts an answer and adds a header line every 0.2 s, never ending it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for n in range(10_000):
                writer.write(f"X-Slow-{n}: y\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.2)

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1)


async def make_webhook(api: Api, url: str) -> str:
    created = await api.client.post(
        "/api/webhooks", json={"url": url, "events": ["vm.ready"]}, headers=api.headers()
    )
    assert created.status_code == 201, created.text
    hook_id = created.json()["id"]
    assert isinstance(hook_id, str)
    return hook_id


async def first_attempt_error(api: Api, hook_id: str) -> str:
    url = f"/api/webhooks/{hook_id}/deliveries"
    for _ in range(200):
        deliveries = (await api.client.get(url, headers=api.headers())).json()["deliveries"]
        attempts = [a for d in deliveries for a in d["attempts"]]
        if attempts:
            error = attempts[0]["error"]
            assert isinstance(error, str)
            return error
        await asyncio.sleep(0.05)
    raise AssertionError(f"no attempt recorded for webhook {hook_id}")


async def test_an_unsendable_url_and_a_trickling_receiver_hold_back_no_other_webhook(
    api_hooks: Api, receiver: WebhookReceiver
) -> None:
    api = api_hooks
    broken = await make_webhook(api, f"{receiver.url}-broken")
    async with api.ctl.store.engine.begin() as conn:  # as an older controller let it be stored
        await conn.execute(
            text("UPDATE webhooks SET url = :url WHERE id = :id"),
            {"url": f"{receiver.url}\x01", "id": broken},
        )
    async with trickling_receiver() as slow_url:
        slow = await make_webhook(api, slow_url)
        await make_webhook(api, receiver.url)
        headers = api.headers(await api.user_key("ann"))
        for _ in range(40):  # more than a batch of deliveries owed to the broken hook alone
            created = await api.client.post("/api/vms", json={}, headers=headers)
            assert created.status_code == 201, created.text
            await api.client.delete(f"/api/vms/{created.json()['id']}", headers=headers)

        arrived = await receiver.wait_for("vm.ready", count=40, timeout_s=60)

        assert len(arrived) == 40
        assert "control characters" in await first_attempt_error(api, broken)
        assert "did not answer within 1 s" in await first_attempt_error(api, slow)
    metrics = (await api.client.get("/metrics", headers=api.headers())).text
    backlog = next(
        line for line in metrics.splitlines() if line.startswith("hearth_webhook_backlog")
    )
    assert float(backlog.split()[1]) > 0  # the broken and slow hooks' deliveries, still owed


async def test_urls_that_cannot_be_sent_are_refused_at_creation(api: Api) -> None:
    for url, fragment in [
        ("http://127.0.0.1/hook\x01", "control characters"),
        ("http://127.0.0.1/a hook", "spaces"),
        (f"http://{'a' * 64}.example/hook", "not a valid name"),
        ("http://[fe80::1%25eth0]/hook", "zone"),
    ]:
        refused = await api.client.post(
            "/api/webhooks", json={"url": url, "events": ["vm.ready"]}, headers=api.headers()
        )
        assert fragment in assert_error(refused, 422, "invalid_input")["message"], url


async def test_a_url_with_a_malformed_host_or_a_port_outside_1_to_65535_is_refused_422(
    api: Api,
) -> None:
    for url, fragment in [
        ("http://[abc/hook", "host is not valid"),  # a bracket never closed
        ("http://a]b/hook", "host is not valid"),
        ("http://[1.2.3.4]/hook", "host is not valid"),  # brackets hold IPv6 only
        ("http://1.2.3.4:0/hook", "port must be 1 to 65535, not 0"),  # not the scheme's 80
        ("https://[2001:db8::1]:0/hook", "port must be 1 to 65535, not 0"),
        ("http://1.2.3.4:99999/hook", "port must be 1 to 65535"),
        ("http://1.2.3.4:-1/hook", "port must be 1 to 65535"),
    ]:
        refused = await api.client.post(
            "/api/webhooks", json={"url": url, "events": ["vm.ready"]}, headers=api.headers()
        )
        assert fragment in assert_error(refused, 422, "invalid_input")["message"], url
    assert (await api.client.get("/api/webhooks", headers=api.headers())).json() == {"webhooks": []}

"""The event log and webhooks, in process over the fake backend, with a receiver on loopback.

Events are stored before they are delivered: a VM that becomes ready or dies reaches a webhook
signed with its secret; a receiver that fails is retried with backoff and every attempt is
recorded; a controller that stops with deliveries pending delivers them after its restart;
``GET /api/events`` pages by id (a user sees their own) and follows as an event stream. Bad
webhooks are refused with 422, one past the cap with 409, and only an admin may make them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse

from hearth.config import Settings
from hearth.events.signing import verify
from hearth.events.webhooks import MAX_WEBHOOKS
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api, served
from tests.integration.store_fixtures import new_webhook
from tests.webhook_receiver import *  # noqa: F403
from tests.webhook_receiver import WebhookReceiver


@pytest.fixture
def hook_settings(api_settings: Settings) -> Settings:
    """Receivers on loopback allowed; retries fast."""
    return api_settings.with_overrides(webhook_allow_private=True, webhook_backoff_s=0.05)


@pytest.fixture
async def api_hooks(
    hook_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    async with running_api(hook_settings, fake_backend, tmp_path / "image") as api:
        yield api


async def make_webhook(api: Api, url: str, events: list[str]) -> dict[str, object]:
    created = await api.client.post(
        "/api/webhooks", json={"url": url, "events": events}, headers=api.headers()
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert isinstance(body, dict)
    return body


async def new_vm(api: Api, user: str) -> tuple[str, dict[str, str]]:
    headers = api.headers(await api.user_key(user))
    created = await api.client.post("/api/vms", json={}, headers=headers)
    assert created.status_code == 201, created.text
    return created.json()["id"], headers


async def test_a_ready_vm_and_a_dead_one_reach_the_webhook_signed_with_its_secret(
    api_hooks: Api, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    api = api_hooks
    hook = await make_webhook(api, receiver.url, ["vm.ready", "vm.failed"])
    secret = hook["secret"]
    assert isinstance(secret, str)
    assert secret.startswith("whsec_")
    vm_id, _ = await new_vm(api, "ann")
    (ready,) = await receiver.wait_for("vm.ready")
    assert verify(secret, ready.body, ready.headers["x-hearth-signature"])
    assert not verify("whsec_other", ready.body, ready.headers["x-hearth-signature"])
    assert ready.event["vmId"] == vm_id
    assert ready.event["userId"] == "ann"
    assert ready.headers["x-hearth-delivery"].startswith("dl-")
    api.backend.kill(vm_id)
    (failed,) = await receiver.wait_for("vm.failed", timeout_s=5)
    assert verify(secret, failed.body, failed.headers["x-hearth-signature"])
    assert failed.event["vmId"] == vm_id
    assert failed.event["data"]["stage"] == "running"
    # The secret is shown once: never listed, never logged.
    listed = (await api.client.get("/api/webhooks", headers=api.headers())).json()
    assert listed["webhooks"][0]["id"] == hook["id"]
    assert "secret" not in listed["webhooks"][0]
    assert secret not in capsys.readouterr().out


async def test_a_failing_receiver_is_retried_and_every_attempt_recorded(
    api_hooks: Api, receiver: WebhookReceiver
) -> None:
    api = api_hooks
    receiver.statuses = [500, 503]
    hook = await make_webhook(api, receiver.url, ["vm.ready"])
    await new_vm(api, "ann")
    first, second, third = await receiver.wait_for("vm.ready", count=3)
    # The same delivery id every time, so the receiver can drop repeats.
    assert len({r.headers["x-hearth-delivery"] for r in (first, second, third)}) == 1
    url = f"/api/webhooks/{hook['id']}/deliveries"
    for _ in range(50):
        (delivery,) = (await api.client.get(url, headers=api.headers())).json()["deliveries"]
        if delivery["status"] == "delivered":
            break
        await asyncio.sleep(0.05)
    assert delivery["status"] == "delivered", delivery
    assert [a["statusCode"] for a in delivery["attempts"]] == [500, 503, 200]
    assert delivery["attempts"][0]["error"] == "the receiver answered 500"
    assert delivery["eventType"] == "vm.ready"
    assert delivery["nextAttemptAt"] is None
    metrics = (await api.client.get("/metrics", headers=api.headers())).text
    assert 'hearth_webhook_deliveries_total{outcome="retry"} 2.0' in metrics
    # The backlog gauge is set by the dispatcher's next round after the delivery.
    for _ in range(100):
        if "hearth_webhook_backlog 0.0" in metrics:
            break
        await asyncio.sleep(0.05)
        metrics = (await api.client.get("/metrics", headers=api.headers())).text
    assert "hearth_webhook_backlog 0.0" in metrics


async def test_deliveries_pending_when_the_controller_stops_are_sent_after_its_restart(
    hook_settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    receiver = WebhookReceiver()
    await receiver.start()
    await receiver.stop()  # its port is known, nothing listens there yet
    async with running_api(hook_settings, backend, tmp_path / "image") as first:
        await make_webhook(first, receiver.url, ["vm.ready"])
        vm_id, _ = await new_vm(first, "ann")
    await receiver.start()
    try:
        async with running_api(hook_settings, backend, tmp_path / "image"):
            (ready,) = await receiver.wait_for("vm.ready")
    finally:
        await receiver.stop()
    assert ready.event["vmId"] == vm_id


async def test_events_are_paged_by_id_a_user_sees_their_own_and_the_stream_follows(
    api_hooks: Api,
) -> None:
    api = api_hooks
    ann_vm, ann = await new_vm(api, "ann")
    bob_vm, _bob = await new_vm(api, "bob")
    everything = (await api.client.get("/api/events", headers=api.headers())).json()
    assert [(e["type"], e["vmId"]) for e in everything["events"]] == [
        ("vm.ready", ann_vm),
        ("vm.ready", bob_vm),
    ]
    own = (await api.client.get("/api/events", headers=ann)).json()
    assert [e["vmId"] for e in own["events"]] == [ann_vm]
    after = (await api.client.get(f"/api/events?since={own['last']}", headers=ann)).json()
    assert after == {"events": [], "last": own["last"]}
    # Ids are signed 64-bit: one past that is refused, not a 500 from the store.
    largest = await api.client.get(f"/api/events?since={2**63 - 1}", headers=ann)
    assert largest.json() == {"events": [], "last": 2**63 - 1}
    assert_error(
        await api.client.get(f"/api/events?since={2**63}", headers=ann), 422, "invalid_input"
    )
    # The stream resumes after Last-Event-ID and follows what comes next.
    stream_headers = {**ann, "Last-Event-ID": str(own["last"])}
    async with (
        served(api.app) as url,
        httpx.AsyncClient(base_url=url) as client,
        aconnect_sse(client, "GET", "/api/events", headers=stream_headers) as source,
    ):
        api.backend.kill(ann_vm)
        async with asyncio.timeout(10):
            sse = await anext(source.aiter_sse())
    assert sse.event == "vm.failed"
    assert json.loads(sse.data)["vmId"] == ann_vm
    assert int(sse.id) > own["last"]


async def test_a_revoked_key_gets_no_more_events_on_a_stream_it_opened(api_hooks: Api) -> None:
    api = api_hooks
    vm_id, _ = await new_vm(api, "ann")
    ann = api.headers(await api.user_key("ann"))
    keys = (await api.client.get("/api/keys?userId=ann", headers=api.headers())).json()["keys"]
    key_id = keys[-1]["id"]  # the newest, oldest first
    async with (
        served(api.app) as url,
        httpx.AsyncClient(base_url=url) as client,
        aconnect_sse(client, "GET", "/api/events", headers=ann) as source,
    ):
        events = source.aiter_sse()
        async with asyncio.timeout(10):
            assert (await anext(events)).event == "vm.ready"
        revoked = await api.client.delete(f"/api/keys/{key_id}", headers=api.headers())
        assert revoked.status_code == 200, revoked.text
        api.backend.kill(vm_id)  # an event for ann after the revocation
        async with asyncio.timeout(10):
            with pytest.raises(StopAsyncIteration):
                await anext(events)
    assert "vm.failed" in [e.type for e in await api.ctl.events.list()]


async def test_bad_webhooks_are_refused_and_only_admins_may_make_them(api: Api) -> None:
    url = "/api/webhooks"
    admin = api.headers()
    for body, fragment in [
        ({"url": "ftp://hooks.example/x", "events": ["vm.ready"]}, "http or https"),
        ({"url": "http://127.0.0.1:9/x", "events": ["vm.ready"]}, "HEARTH_WEBHOOK_ALLOW_PRIVATE"),
        ({"url": "http://10.1.2.3/x", "events": ["vm.ready"]}, "private"),
        ({"url": "http://[::1]/x", "events": ["vm.ready"]}, "private"),
        ({"url": "http://u:p@127.0.0.1/x", "events": ["vm.ready"]}, "user or password"),
        ({"url": "http://127.0.0.1/x", "events": ["vm.exploded"]}, "vm.exploded"),
    ]:
        refused = await api.client.post(url, json=body, headers=admin)
        assert fragment in assert_error(refused, 422, "invalid_input")["message"], body
    assert_error(
        await api.client.post(url, json={"url": "http://x"}, headers=admin), 422, "invalid_input"
    )
    assert (await api.client.get(url, headers=admin)).json() == {"webhooks": []}
    user = api.headers(await api.user_key("ann"))
    body = {"url": "http://127.0.0.1/x", "events": ["vm.ready"]}
    assert_error(await api.client.post(url, json=body, headers=user), 403, "forbidden")
    assert_error(await api.client.get(url, headers=user), 403, "forbidden")
    missing = await api.client.delete(f"{url}/wh-nothing", headers=admin)
    assert_error(missing, 404, "not_found")


async def test_creates_side_by_side_never_pass_the_webhook_cap_and_are_refused_409_quota(
    api: Api,
) -> None:
    for _ in range(MAX_WEBHOOKS - 2):
        await api.ctl.store.webhooks.insert(new_webhook())
    body = {"url": "http://1.2.3.4/hook", "events": ["vm.ready"]}
    answers = await asyncio.gather(
        *(api.client.post("/api/webhooks", json=body, headers=api.headers()) for _ in range(10))
    )
    assert sorted(answer.status_code for answer in answers) == [201] * 2 + [409] * 8
    for refused in (answer for answer in answers if answer.status_code == 409):
        message = assert_error(refused, 409, "quota_exceeded")["message"]
        assert f"{MAX_WEBHOOKS} webhooks already" in message
    assert len(await api.ctl.store.webhooks.list()) == MAX_WEBHOOKS

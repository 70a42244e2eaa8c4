"""How the dispatcher shares its attempts out: per webhook, per controller, across a restart.

In process over the fake backend, receivers on loopback. A receiver that takes every request and
never answers holds only its own deliveries back, not another webhook's. Two controllers on one
store send each delivery once, not once each. A delivery whose receiver is answering when the
controller stops is recorded, so the restarted controller does not send it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.events.dispatch import WebhookDispatcher
from hearth.events.types import DeliveryStatus, EventType
from hearth.metrics import ControllerMetrics
from hearth.vm.host import free_local_port
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api
from tests.webhook_receiver import *  # noqa: F403
from tests.webhook_receiver import WebhookReceiver


@pytest.fixture
def hook_settings(api_settings: Settings) -> Settings:
    """Receivers on loopback allowed; retries fast; 3 s for an answer."""
    return api_settings.with_overrides(
        webhook_allow_private=True, webhook_backoff_s=0.05, webhook_timeout_s=3.0
    )


@dataclass
class PlainReceiver:
    """A bare HTTP/1.1 receiver on loopback: reads each request whole, then answers 200 after
    ``delay_s`` (never, if None); keeps the delivery ids, in order of arrival."""

    delay_s: float | None
    deliveries: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            lowered = {name.lower(): value for name, value in headers.items()}
            await reader.readexactly(int(lowered.get("content-length", "0")))
            self.deliveries.append(lowered["x-hearth-delivery"])
            self.arrived.set()
            if self.delay_s is None:
                await reader.read()  # until the sender gives up
                return
            await asyncio.sleep(self.delay_s)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    async def wait_for(self, count: int, *, timeout_s: float = 10) -> None:
        """Until ``count`` requests have arrived."""
        async with asyncio.timeout(timeout_s):
            while len(self.deliveries) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def plain_receiver(delay_s: float | None) -> AsyncIterator[PlainReceiver]:
    receiver = PlainReceiver(delay_s)
    server = await asyncio.start_server(receiver.answer, "127.0.0.1", 0)
    receiver.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        yield receiver
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1)


async def make_webhook(api: Api, url: str, events: list[str]) -> str:
    created = await api.client.post(
        "/api/webhooks", json={"url": url, "events": events}, headers=api.headers()
    )
    assert created.status_code == 201, created.text
    hook_id = created.json()["id"]
    assert isinstance(hook_id, str)
    return hook_id


async def test_a_receiver_that_never_answers_holds_back_no_other_webhook(
    hook_settings: Settings, fake_backend: FakeBackend, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    async with (
        running_api(hook_settings, fake_backend, tmp_path / "image") as api,
        plain_receiver(delay_s=None) as silent,
    ):
        await make_webhook(api, silent.url, ["vm.failed"])
        await make_webhook(api, receiver.url, ["vm.ready"])
        for n in range(40):  # owed to the silent receiver alone, each held its 3 s
            await api.ctl.events.emit(EventType.VM_FAILED, vm_id=f"vm-{n}", stage="boot")
        await silent.wait_for(1)
        await api.ctl.events.emit(EventType.VM_READY, vm_id="vm-good")

        (ready,) = await receiver.wait_for("vm.ready", timeout_s=2)

        assert ready.event["vmId"] == "vm-good"
        # Only a few of the silent receiver's deliveries are tried at once, not all 40.
        assert len(silent.deliveries) < 8


async def test_two_controllers_on_one_store_send_each_delivery_once(
    hook_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    async with (
        running_api(hook_settings, fake_backend, tmp_path / "image") as api,
        plain_receiver(delay_s=0.3) as slow,
    ):
        other = WebhookDispatcher(  # a second controller's, on the same store
            store=api.ctl.store,
            webhooks=api.ctl.webhooks,
            events=api.ctl.events,
            settings=api.settings,
            metrics=ControllerMetrics(),
        )
        other.start()
        try:
            await make_webhook(api, slow.url, ["vm.ready"])
            for n in range(6):
                await api.ctl.events.emit(EventType.VM_READY, vm_id=f"vm-{n}")
            await slow.wait_for(6)
            await asyncio.sleep(1.0)  # time for a second controller's repeats to arrive
        finally:
            await other.stop()

    assert len(slow.deliveries) == 6, slow.deliveries
    assert len(set(slow.deliveries)) == 6


async def test_a_delivery_being_answered_at_a_stop_is_recorded_and_not_sent_again(
    hook_settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    async with plain_receiver(delay_s=0.5) as slow:
        async with running_api(hook_settings, backend, tmp_path / "image") as first:
            hook_id = await make_webhook(first, slow.url, ["vm.ready"])
            await first.ctl.events.emit(EventType.VM_READY, vm_id="vm-1")
            await slow.wait_for(1)  # the receiver has it and is answering: the controller stops
        async with running_api(hook_settings, backend, tmp_path / "image") as second:
            await asyncio.sleep(1.0)  # time for the restarted controller to send it again
            (delivery,) = await second.ctl.webhooks.deliveries(hook_id)

    assert delivery.record.status == DeliveryStatus.DELIVERED
    assert [attempt.status_code for attempt in delivery.attempts] == [200]
    assert len(slow.deliveries) == 1, slow.deliveries


async def test_a_delivery_claimed_as_the_controller_stops_is_tried_not_left_claimed(
    hook_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stop comes just after a delivery was claimed in the store, before its attempt began:
    # the attempt is still made (and recorded), so the restarted controller sends the delivery
    # at once instead of after the claim lapses (the timeout and 30 s).
    backend = FakeBackend()
    receiver = WebhookReceiver(port=free_local_port())  # nothing listens there yet
    async with running_api(hook_settings, backend, tmp_path / "image") as first:
        await make_webhook(first, receiver.url, ["vm.ready"])
        repository = first.ctl.store.webhooks
        claim = repository.claim
        claimed = asyncio.Event()

        async def claim_then_linger(*args: Any, **kwargs: Any) -> Any:
            taken = await claim(*args, **kwargs)
            if taken:
                claimed.set()
                await asyncio.sleep(0.5)  # the stop arrives here
            return taken

        monkeypatch.setattr(repository, "claim", claim_then_linger)
        await first.ctl.events.emit(EventType.VM_READY, vm_id="vm-1")
        await asyncio.wait_for(claimed.wait(), 5)
    await receiver.start()
    try:
        async with running_api(hook_settings, backend, tmp_path / "image"):
            (ready,) = await receiver.wait_for("vm.ready", timeout_s=5)
    finally:
        await receiver.stop()
    assert ready.event["vmId"] == "vm-1"

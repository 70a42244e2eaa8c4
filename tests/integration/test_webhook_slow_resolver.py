"""A receiver's name that takes forever to resolve costs one failed attempt, within the timeout.

In process over the fake backend, the receiver on loopback under a name of its own.
``socket.getaddrinfo`` (what the resolver calls, on its lookup threads) answers that name with
127.0.0.1, or, while ``slow``, not until it is no longer slow: the lookup must end with the
attempt's timeout, recorded as a failed attempt, long before the delivery's claim lapses; once
the name resolves again the retry arrives.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.events.dispatch import CLAIM_MARGIN_S
from hearth.events.types import DeliveryStatus, EventType
from hearth.events.webhooks import Delivery
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api
from tests.webhook_receiver import *  # noqa: F403
from tests.webhook_receiver import WebhookReceiver

NAME = "receiver.hearth.test"
TIMEOUT_S = 1.0

GetAddrInfo = Callable[..., list[Any]]


@dataclass
class SlowName:
    """``NAME`` resolves to loopback at once, or (while ``slow``) only once it is not slow."""

    real: GetAddrInfo
    answering: threading.Event = field(default_factory=threading.Event)

    @property
    def slow(self) -> bool:
        return not self.answering.is_set()

    @slow.setter
    def slow(self, slow: bool) -> None:
        if slow:
            self.answering.clear()
        else:
            self.answering.set()

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **options: Any) -> list[Any]:
        if host != NAME:
            return self.real(host, port, *args, **options)
        self.answering.wait(30)
        return self.real("127.0.0.1", port, *args, **options)


@pytest.fixture
def slow_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowName]:
    name = SlowName(socket.getaddrinfo)
    name.slow = False
    monkeypatch.setattr(socket, "getaddrinfo", name.getaddrinfo)
    try:
        yield name
    finally:
        name.slow = False  # no lookup thread outlives the test


@pytest.fixture
async def api_hooks(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    settings = api_settings.with_overrides(
        webhook_allow_private=True, webhook_backoff_s=0.05, webhook_timeout_s=TIMEOUT_S
    )
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        yield api


async def first_delivery(api: Api, hook_id: str, *, timeout_s: float) -> Delivery:
    """The webhook's delivery, once it has an attempt recorded."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = await api.ctl.webhooks.deliveries(hook_id)
            if found and found[0].attempts:
                return found[0]
            await asyncio.sleep(0.05)


async def test_a_name_that_never_resolves_is_a_failed_attempt_within_the_timeout(
    api_hooks: Api, slow_name: SlowName, receiver: WebhookReceiver
) -> None:
    api = api_hooks
    created = await api.client.post(
        "/api/webhooks",
        json={"url": f"http://{NAME}:{receiver.port}/hook", "events": ["vm.ready"]},
        headers=api.headers(),
    )
    assert created.status_code == 201, created.text
    hook_id = created.json()["id"]
    slow_name.slow = True

    await api.ctl.events.emit(EventType.VM_READY, vm_id="vm-1")
    delivery = await first_delivery(api, hook_id, timeout_s=10)

    first = delivery.attempts[0]
    assert first.status_code is None
    assert first.error == f"the webhook host {NAME} did not resolve within {TIMEOUT_S:g} s"
    # Ended by the attempt's deadline, long before the delivery's claim lapses.
    assert TIMEOUT_S * 1000 * 0.9 <= first.duration_ms < (TIMEOUT_S + CLAIM_MARGIN_S) * 1000
    assert delivery.record.status == DeliveryStatus.PENDING
    assert receiver.received == []

    slow_name.slow = False
    (arrived,) = await receiver.wait_for("vm.ready", timeout_s=10)
    assert arrived.headers["host"] == f"{NAME}:{receiver.port}"
    assert arrived.headers["x-hearth-delivery"] == delivery.record.id


async def test_a_create_whose_name_never_resolves_is_422_within_the_timeout(
    api_hooks: Api, slow_name: SlowName
) -> None:
    api = api_hooks
    slow_name.slow = True

    async with asyncio.timeout(TIMEOUT_S + 5):
        created = await api.client.post(
            "/api/webhooks",
            json={"url": f"http://{NAME}:8443/hook", "events": ["vm.ready"]},
            headers=api.headers(),
        )

    assert created.status_code == 422, created.text
    assert created.json()["error"]["message"] == (
        f"the webhook host {NAME} did not resolve within {TIMEOUT_S:g} s"
    )
    assert (await api.client.get("/api/webhooks", headers=api.headers())).json()["webhooks"] == []

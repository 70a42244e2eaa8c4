"""Every VM restored from one template is its own: randomness drawn right after the claim differs.

Clones wake with their template's memory, the guest kernel's CRNG state included; the claim
(``POST /init``) reseeds it with the host's entropy. These tests force the case the first issue
met by chance: several clones of one template read ``getrandom`` right after their claim, and
Chromium and a vendor CLI in two Browser VMs draw their own random values.
"""

from __future__ import annotations

import base64
import itertools
import json
import urllib.parse
from typing import Any

import httpx
import pytest

from hearth.bench.signin import CdpPage
from hearth.images.manifest import ImageDir
from hearth.vm.types import BootMode, Vm, VmSpec
from tests.vm.browser_fixtures import *  # noqa: F403
from tests.vm.browser_fixtures import DEVTOOLS_RELAY_PORT
from tests.vm.conftest import TrackingBackend
from tests.vm.test_browser_vm import BROWSER_COLD_BOOT_DEADLINE_S, BROWSER_SPEC
from tests.vm.test_vendor_clis import agent_client

pytestmark = [pytest.mark.slow, pytest.mark.vm]

CLONES = 4
RANDOM_VALUES_JS = "Array.from(crypto.getRandomValues(new Uint8Array(32))).join(',')"


def pairwise_distinct(values: list[Any]) -> bool:
    return all(a != b for a, b in itertools.combinations(values, 2))


async def guest_random(client: httpx.AsyncClient, vm: Vm) -> bytes:
    response = await client.get(
        f"{vm.agent_url}/random", headers={"Authorization": f"Bearer {vm.token}"}
    )
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["getrandom"])


async def test_clones_of_one_template_draw_different_random_bytes_right_after_their_claim(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    # Restored one after another from one template, unclaimed (as the warm pool holds them),
    # then claimed and asked for 32 bytes of getrandom at once.
    spec = VmSpec(mem_mib=384)
    clones = [await qemu_backend.create(minimal_image, spec, claim=False) for _ in range(CLONES)]
    assert all(vm.boot_mode is BootMode.RESTORE for vm in clones)
    samples = []
    async with httpx.AsyncClient(timeout=30) as client:
        for vm in clones:
            await qemu_backend.claim(vm)
            samples.append(await guest_random(client, vm))
    print("getrandom right after the claim:", [s.hex()[:16] for s in samples])
    assert all(len(sample) == 32 for sample in samples)
    assert pairwise_distinct(samples)


async def test_a_claim_that_cannot_reseed_hands_out_no_vm(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    # A controller that sends too little entropy is refused by the agent, which stays unclaimed.
    vm = await qemu_backend.create(minimal_image, VmSpec(mem_mib=384), claim=False)
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(
            f"{vm.agent_url}/init",
            json={"token": "t" * 43, "entropy": base64.b64encode(b"x" * 8).decode()},
        )
        health = (await client.get(f"{vm.agent_url}/health")).json()
    assert refused.status_code == 422
    assert "entropy" in refused.json()["error"]["message"]
    assert health["claimed"] is False
    # The real claim then reseeds (and says so, or the backend would refuse the VM).
    await qemu_backend.claim(vm)


@pytest.fixture
def browser_backend(qemu_backend: TrackingBackend) -> TrackingBackend:
    qemu_backend.cold_deadline_s = BROWSER_COLD_BOOT_DEADLINE_S
    return qemu_backend


async def chromium_random_values(vm: Vm) -> tuple[str, str]:
    """getRandomValues in the tab Chromium had open in the template, and in a new tab."""
    port = vm.ports[DEVTOOLS_RELAY_PORT]
    old_tab = await CdpPage.find(port, "about:blank", timeout_s=180)
    try:
        in_old_tab = await old_tab.evaluate(RANDOM_VALUES_JS)
    finally:
        await old_tab.close()
    async with httpx.AsyncClient(timeout=60) as client:
        target = (await client.put(f"http://127.0.0.1:{port}/json/new?data:text/html,new")).json()
    new_tab = await CdpPage.find(port, "data:text/html,new", timeout_s=180)
    try:
        in_new_tab = await new_tab.evaluate(RANDOM_VALUES_JS)
    finally:
        await new_tab.close()
    assert target["type"] == "page"
    return str(in_old_tab), str(in_new_tab)


async def test_two_browser_vms_from_one_template_give_chromium_different_random_values(
    browser_image: ImageDir, browser_backend: TrackingBackend
) -> None:
    vms = [await browser_backend.create(browser_image, BROWSER_SPEC) for _ in range(2)]
    assert [vm.boot_mode for vm in vms] == [BootMode.RESTORE, BootMode.RESTORE]
    values = [await chromium_random_values(vm) for vm in vms]
    print("crypto.getRandomValues (old tab, new tab):", json.dumps(values)[:200])
    assert values[0][0] != values[1][0], "the tab restored from the template repeats itself"
    assert values[0][1] != values[1][1]


async def test_a_vendor_login_in_two_browser_vms_asks_for_different_state_and_challenge(
    browser_image: ImageDir, browser_backend: TrackingBackend
) -> None:
    queries = []
    for _ in range(2):
        vm = await browser_backend.create(browser_image, BROWSER_SPEC)
        async with agent_client(vm) as agent:
            # The URL as codex printed it (whether Chromium took it in time is not the point).
            response = await agent.post("/login/start", json={"provider": "codex"})
            assert response.status_code == 201, response.text
            login = response.json()
            await agent.delete(f"/login/{login['login_id']}")
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(login["authorize_url"]).query))
        queries.append(query)
        await browser_backend.destroy(vm)
    first, second = queries
    assert first["state"] != second["state"]
    assert first["code_challenge"] != second["code_challenge"]

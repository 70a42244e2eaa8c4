"""Every VM restored from one template is its own: randomness drawn right after the claim differs.

Clones wake with their template's memory, the guest kernel's CRNG state included; the claim
(``POST /init``) reseeds it with the host's entropy. These tests force the case the first issue
met by chance: several clones of one template read ``getrandom`` right after their claim, and
Chromium and a vendor CLI in two Browser VMs draw their own random values, and Chromium's TLS
(BoringSSL, whose per-thread generator a clone shares with its template unless it is drawn anew)
sends its own ClientHello random and key share.
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
from hearth.network.client_hello import parse_client_hello
from hearth.vm.types import BootMode, Vm, VmSpec
from tests.vm.browser_fixtures import *  # noqa: F403
from tests.vm.browser_fixtures import DEVTOOLS_RELAY_PORT
from tests.vm.conftest import TrackingBackend
from tests.vm.test_browser_vm import BROWSER_COLD_BOOT_DEADLINE_S, BROWSER_SPEC
from tests.vm.test_exec import events_of
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
        # DevTools lists the tab by the URL it is still navigating to: wait for the page.
        loaded = "location.href.startsWith('data:') && document.readyState === 'complete'"
        await new_tab.wait_for(loaded, timeout_s=180)
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


# Run in the guest: accept one TLS connection on loopback and print its first record in hex.
CLIENT_HELLO_LISTENER = """
import socket
server = socket.create_server(("127.0.0.1", 8443))
server.settimeout(240)
print("listening", flush=True)
conn, _ = server.accept()
conn.settimeout(60)
data = b""
while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
    chunk = conn.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.hex(), flush=True)
"""
KEY_SHARE = 51


def random_parts(record: bytes) -> tuple[bytes, bytes, bytes]:
    """A ClientHello record's random, legacy session id and key_share extension."""
    body = record[5 + 4 :]  # the record's header, then the handshake's
    parse_client_hello(body)  # a whole, well-formed ClientHello
    random, at = body[2:34], 34
    session_id = body[at + 1 : at + 1 + body[at]]
    at += 1 + body[at]
    at += 2 + int.from_bytes(body[at : at + 2], "big")  # cipher suites
    at += 1 + body[at]  # compression methods
    end, at = at + 2 + int.from_bytes(body[at : at + 2], "big"), at + 2
    key_share = b""
    while at < end:
        kind, size = int.from_bytes(body[at : at + 2], "big"), int.from_bytes(body[at + 2 : at + 4])
        if kind == KEY_SHARE:
            key_share = body[at + 4 : at + 4 + size]
        at += 4 + size
    return random, session_id, key_share


async def chromium_client_hello(vm: Vm) -> bytes:
    """The first ClientHello Chromium sends in ``vm`` for a new tab's https page (on the guest's
    loopback: no proxy, nothing leaves the VM)."""
    async with agent_client(vm) as agent:
        started = await agent.post("/exec", json={"cmd": ["python3", "-c", CLIENT_HELLO_LISTENER]})
        assert started.status_code == 201, started.text
        events_url = f"/exec/{started.json()['exec_id']}/events"
        first = await events_of(agent, "GET", events_url, limit=1)
        assert "listening" in json.dumps(first), first
        port = vm.ports[DEVTOOLS_RELAY_PORT]
        async with httpx.AsyncClient(timeout=60) as client:
            await client.put(f"http://127.0.0.1:{port}/json/new?https://127.0.0.1:8443/")
        events = await events_of(agent, "GET", events_url)
    out = "".join(str(data.get("data", "")) for _, kind, data in events if kind == "stdout")
    hex_line = out.split()[-1]
    return bytes.fromhex(hex_line)


async def test_two_browser_vms_from_one_template_send_their_own_tls_randoms(
    browser_image: ImageDir, browser_backend: TrackingBackend
) -> None:
    vms = [await browser_backend.create(browser_image, BROWSER_SPEC) for _ in range(2)]
    assert [vm.boot_mode for vm in vms] == [BootMode.RESTORE, BootMode.RESTORE]
    hellos = [random_parts(await chromium_client_hello(vm)) for vm in vms]
    print("ClientHello random, session id, key share:", [[p.hex()[:16] for p in h] for h in hellos])
    first, second = hellos
    assert all(len(part) >= 32 for part in first), first
    assert first[0] != second[0], "the TLS random repeats across clones"
    assert first[1] != second[1], "the TLS session id repeats across clones"
    assert first[2] != second[2], "the TLS key share repeats across clones"

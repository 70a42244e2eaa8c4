"""Browser VMs end to end: the browser image boots Chromium under QEMU, reachable over DevTools
and VNC through forwarded loopback ports, and clones restore from a template with Chromium running.
"""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from hearth.auth.rfb import RfbRefused
from hearth.images.ext4 import Ext4Image
from hearth.images.layout import BROWSER_SERVICE_PATH
from hearth.images.manifest import ImageDir
from hearth.vm.readiness import Deadline
from hearth.vm.types import BootMode, VmSpec, VmState, VmType
from hearth_agent.vnc import vnc_password
from tests.conftest import BuiltImage, hearth_cli
from tests.vm.browser_fixtures import *  # noqa: F403
from tests.vm.browser_fixtures import (
    DEVTOOLS_RELAY_PORT,
    VNC_PORT,
    DevTools,
    RfbClient,
    RfbError,
    png_bytes,
    save_artifact,
    wait_for_rfb_greeting,
)
from tests.vm.conftest import TrackingBackend

pytestmark = [pytest.mark.slow, pytest.mark.vm]

# FACTS: with one vCPU Chromium is unusable under TCG; 2 GiB leaves it room.
BROWSER_SPEC = VmSpec(
    vm_type=VmType.BROWSER,
    vcpus=2,
    mem_mib=2048,
    forward_ports=(VNC_PORT, DEVTOOLS_RELAY_PORT),
)
# The agent of a Browser VM starts only once DevTools answers (≈ 45 s under TCG on an idle host),
# so a cold boot needs more than the backend's default deadline, which is sized for the minimal
# image. A template build is a cold boot too.
BROWSER_COLD_BOOT_DEADLINE_S = 300.0
# Only after the agent is healthy: DevTools and VNC should then answer at once, but a loaded CI
# host can be slow, and the first answer after a restore may take a few seconds.
SERVICE_DEADLINE_S = 180.0
PAGE_COLOUR = (255, 0, 170)
PAGE = (
    "data:text/html,<title>hearth</title>"
    f"<body style='margin:0;background:rgb{PAGE_COLOUR}'>"
    "<h1 style='font:48px sans-serif;color:white;padding:40px'>Hearth browser VM</h1></body>"
)


@pytest.fixture
def browser_backend(qemu_backend: TrackingBackend) -> TrackingBackend:
    """The per-test QEMU backend with a cold-boot deadline that fits Chromium under TCG."""
    qemu_backend.cold_deadline_s = BROWSER_COLD_BOOT_DEADLINE_S
    return qemu_backend


def test_browser_image_carries_chromium_and_the_browser_service(
    browser_image_build: BuiltImage,
) -> None:
    image = browser_image_build.image
    manifest = image.manifest
    assert manifest is not None
    assert manifest.recipe == "browser"
    for package in ("chromium", "xvfb", "x11vnc", "socat", "dbus-x11", "python3"):
        assert package in manifest.packages
    assert manifest.sizes["rootfs.ext4"] == manifest.disk_mib * 2**20
    ext4 = Ext4Image(image.rootfs)
    assert ext4.stat("/usr/bin/chromium") is not None
    service = ext4.stat(BROWSER_SERVICE_PATH)
    assert service is not None
    assert service.mode == 0o755
    verified = hearth_cli("image", "verify", str(image.rootfs))
    assert verified.returncode == 0, verified.stderr
    used = image.rootfs.stat().st_blocks * 512
    print(
        f"browser image build: {browser_image_build.seconds:.1f} s; rootfs "
        f"{manifest.disk_mib} MiB, {used / 2**20:.0f} MiB allocated"
    )


async def test_cold_booted_browser_vm_is_healthy_only_once_devtools_answers(
    browser_image: ImageDir, browser_backend: TrackingBackend
) -> None:
    started = time.monotonic()
    vm = await browser_backend.create(browser_image, BROWSER_SPEC, boot_mode=BootMode.COLD)
    print(f"browser VM cold boot to healthy (Chromium up): {time.monotonic() - started:.1f} s")
    assert vm.state is VmState.READY
    assert vm.boot_mode is BootMode.COLD
    # No polling: hearth-init holds the agent back until DevTools answers through the relay.
    version = await DevTools(vm.ports[DEVTOOLS_RELAY_PORT]).version(Deadline.after(15))
    assert "Chrom" in version["Browser"]
    console = browser_backend.console_tail(vm, 100_000)
    ready = console.index("hearth-browser: DevTools answers")
    assert ready < console.index("hearth-init: starting agent")
    print(console[ready:].splitlines()[0])


async def test_browser_vm_restores_with_chromium_running_and_shows_pages_over_vnc(
    browser_image: ImageDir, browser_backend: TrackingBackend
) -> None:
    started = time.monotonic()
    vm = await browser_backend.create(browser_image, BROWSER_SPEC)
    print(
        f"first browser VM (template built if missing, then restored): "
        f"{time.monotonic() - started:.1f} s, restore to healthy {vm.time_to_healthy_s:.2f} s"
    )
    assert vm.boot_mode is BootMode.RESTORE
    assert set(vm.ports) == {VNC_PORT, DEVTOOLS_RELAY_PORT}
    devtools = DevTools(vm.ports[DEVTOOLS_RELAY_PORT])
    version = await devtools.wait_until_answering(Deadline.after(SERVICE_DEADLINE_S))
    assert "Chrom" in version["Browser"], version
    greeting = await wait_for_rfb_greeting(vm.ports[VNC_PORT], Deadline.after(SERVICE_DEADLINE_S))
    print(f"DevTools: {version['Browser']}; VNC greeting {greeting!r}")

    tab = await devtools.open_tab(PAGE, Deadline.after(60))
    assert tab["type"] == "page"
    deadline = Deadline.after(SERVICE_DEADLINE_S)
    assert vm.token is not None
    while True:
        client = await RfbClient.connect(
            vm.ports[VNC_PORT], Deadline.after(30), password=vnc_password(vm.token)
        )
        try:
            frame = await client.capture(Deadline.after(60))
        finally:
            await client.close()
        if frame.share_of(PAGE_COLOUR) > 0.25 or deadline.expired:
            break
        await asyncio.sleep(1)
    path = save_artifact("browser-vm/screen.png", png_bytes(frame))
    print(f"VNC screenshot saved to {path}")
    assert (frame.width, frame.height) == (1280, 800)
    assert frame.distinct_colours() > 1, "the screen is all one colour"
    assert frame.share_of(PAGE_COLOUR) > 0.25, f"the opened page is not on screen; see {path}"
    png = path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (1280, 800)


async def test_vnc_refuses_a_local_client_without_the_vms_own_password(
    browser_image: ImageDir, browser_backend: TrackingBackend
) -> None:
    vm = await browser_backend.create(browser_image, BROWSER_SPEC)
    port = vm.ports[VNC_PORT]
    await wait_for_rfb_greeting(port, Deadline.after(SERVICE_DEADLINE_S))
    # What any process on the host could try: security None, or a guessed password.
    with pytest.raises(RfbError, match="does not offer security None"):
        await RfbClient.connect(port, Deadline.after(30))
    with pytest.raises(RfbRefused, match="did not accept"):
        await RfbClient.connect(port, Deadline.after(30), password="guessed!")
    other = await browser_backend.create(browser_image, BROWSER_SPEC)
    assert other.token is not None
    with pytest.raises(RfbRefused, match="did not accept"):
        await RfbClient.connect(port, Deadline.after(30), password=vnc_password(other.token))
    assert vm.token is not None
    client = await RfbClient.connect(port, Deadline.after(30), password=vnc_password(vm.token))
    try:
        assert (client.width, client.height) == (1280, 800)
    finally:
        await client.close()


async def test_second_browser_vm_is_a_restore_that_answers_devtools(
    browser_image: ImageDir, browser_backend: TrackingBackend
) -> None:
    first = await browser_backend.create(browser_image, BROWSER_SPEC)
    await browser_backend.destroy(first)
    started = time.monotonic()
    vm = await browser_backend.create(browser_image, BROWSER_SPEC)
    assert vm.boot_mode is BootMode.RESTORE
    assert vm.time_to_healthy_s is not None
    version = await DevTools(vm.ports[DEVTOOLS_RELAY_PORT]).wait_until_answering(
        Deadline.after(SERVICE_DEADLINE_S)
    )
    to_devtools = time.monotonic() - started
    print(
        f"second browser VM restore: healthy in {vm.time_to_healthy_s:.2f} s, "
        f"DevTools answering {to_devtools:.2f} s after create()"
    )
    assert "Chrom" in version["Browser"]


async def test_chromium_that_exits_is_started_again(
    browser_image: ImageDir, browser_backend: TrackingBackend
) -> None:
    vm = await browser_backend.create(browser_image, BROWSER_SPEC)
    devtools = DevTools(vm.ports[DEVTOOLS_RELAY_PORT])
    before = await devtools.wait_until_answering(Deadline.after(SERVICE_DEADLINE_S))
    await devtools.close_browser(Deadline.after(60))
    closed = time.monotonic()
    deadline = Deadline.after(SERVICE_DEADLINE_S)
    while True:  # the closing browser may still answer for a moment
        after = await devtools.wait_until_answering(deadline)
        if after["webSocketDebuggerUrl"] != before["webSocketDebuggerUrl"] or deadline.expired:
            break
        await asyncio.sleep(0.5)
    print(f"Chromium answering again {time.monotonic() - closed:.1f} s after Browser.close")
    assert after["webSocketDebuggerUrl"] != before["webSocketDebuggerUrl"], "not a new browser"
    assert "hearth-browser: chromium: exited with status" in browser_backend.console_tail(vm, 500)
    await wait_for_rfb_greeting(vm.ports[VNC_PORT], Deadline.after(SERVICE_DEADLINE_S))

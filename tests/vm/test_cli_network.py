"""A real CLI VM's way out: only through its egress path, only where its policy allows.

From inside the guest (commands run through ``/api/vms/{id}/exec``): a CONNECT through the
proxy address to an allowed name reaches the loopback stand-in that name is pinned to (bytes go
there and back); a name off the policy gets 403; and a process that ignores the proxy and dials
the host directly gets nothing (QEMU user networking runs with ``restrict=on``; a VM's network
namespace forwards only its egress endpoint). And a restarted controller reopens the running VM's
path, with its policy, where the VM dials it. Both network modes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.images.manifest import ImageDir
from tests.conftest import require_tools
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api, serve_app
from tests.vm.conftest import qemu_pids_under
from tests.vm.test_api import sqlite_only, user_key
from tests.vm.test_exec import events_of, exit_of, output

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]

# Run in the guest: CONNECT through the proxy, send a line, print what comes back (or the
# proxy's status line when it refuses).
THROUGH_PROXY = """
import os, socket, sys
proxy = os.environ["HTTPS_PROXY"].rsplit("/", 1)[-1]
host, port = proxy.rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=20)
s.sendall(("CONNECT %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % (sys.argv[1], sys.argv[1])).encode())
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += s.recv(1)
status = head.split(b" ")[1].decode()
if status != "200":
    print("refused", status)
    sys.exit(0)
s.sendall(b"ping from the guest\\n")
print("echoed", s.recv(100).decode().strip())
"""
ECHOED = "echoed ping from the guest"
# Run in the guest: dial the host's loopback server straight, ignoring the proxy.
DIRECT = """
import socket, sys
try:
    socket.create_connection(("10.0.2.2", int(sys.argv[1])), timeout=5)
except OSError as exc:
    print("no way out:", type(exc).__name__)
else:
    print("CONNECTED")
"""


@pytest.fixture(params=["user", "netns"])
def settings(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, echo_port: int
) -> Settings:
    """CLI VMs on QEMU user networking and in network namespaces, which may be allowed
    ``stand-in.test``, pinned to the echo server."""
    if request.param == "netns":
        require_tools("ip", "nft")
    return Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_DATABASE_URL": database_url,
            "HEARTH_EGRESS_PINS": f"stand-in.test:443=127.0.0.1:{echo_port}",
            "HEARTH_NETWORK_MODE": request.param,
        }
    )


@contextlib.asynccontextmanager
async def controller(
    settings: Settings, minimal_image: ImageDir, vm_state_dir: Path, *, destroy_on_exit: bool
) -> AsyncIterator[Api]:
    """The controller in process, served until the block ends."""
    served = serve_app(
        settings,
        minimal_image=minimal_image,
        template_dir=vm_state_dir / "templates",
        destroy_on_exit=destroy_on_exit,
    )
    async with contextlib.aclosing(served):
        yield await anext(served)


async def test_the_guest_reaches_an_allowed_name_through_its_path_and_nothing_else(
    settings: Settings, minimal_image: ImageDir, vm_state_dir: Path, echo_port: int
) -> None:
    async with controller(settings, minimal_image, vm_state_dir, destroy_on_exit=False) as first:
        key = await user_key(first, "ann")
        async with first.client(key) as client:
            created = await client.post("/api/vms", json={})
            assert created.status_code == 201, created.text
            vm_id = created.json()["id"]
            guest = Guest(client, vm_id)
            # Nothing is allowed before a credential or the user opens something.
            assert await guest.run(THROUGH_PROXY, "stand-in.test:443") == "refused 403"
            opened = await client.put(
                f"/api/vms/{vm_id}/network", json={"allowOut": ["stand-in.test"]}
            )
            assert opened.status_code == 200, opened.text
            assert await guest.run(THROUGH_PROXY, "stand-in.test:443") == ECHOED
            assert await guest.run(THROUGH_PROXY, "elsewhere.test:443") == "refused 403"
            # A process that ignores the proxy has no route to the host's services.
            direct = await guest.run(DIRECT, str(echo_port))
            assert direct.startswith("no way out"), direct
    # A restarted controller adopts the running VM and reopens its path where QEMU dials it.
    again = controller(settings, minimal_image, vm_state_dir, destroy_on_exit=True)
    async with again as second, second.client(key) as client:
        guest = Guest(client, vm_id)
        assert await guest.run(THROUGH_PROXY, "stand-in.test:443") == ECHOED
        assert await guest.run(THROUGH_PROXY, "elsewhere.test:443") == "refused 403"
    assert qemu_pids_under(settings.state_dir) == [], "a VM outlived its controller"


@dataclass
class Guest:
    """Runs Python programs in the VM through ``POST /api/vms/{id}/exec``."""

    client: httpx.AsyncClient
    vm_id: str

    async def run(self, program: str, argument: str) -> str:
        """The program's stdout, stripped (it must exit 0)."""
        events = await events_of(
            self.client,
            "POST",
            f"/api/vms/{self.vm_id}/exec",
            json={"cmd": ["python3", "-c", program, argument]},
        )
        assert exit_of(events)["code"] == 0, output(events, "stderr")
        return output(events, "stdout").decode().strip()

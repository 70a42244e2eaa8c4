"""The OAuth server ``hearth bench auth`` logs in against: node + the test oidc-provider server.

The server (``oidc_server/server.mjs``, shipped with this package and installed under the cache
dir by ``hearth.bench.oidc_install``) listens on 127.0.0.1:P.
Browser VMs reach it as ``http://10.0.2.100:P``: the controller, given that issuer and
``HEARTH_OIDC_UPSTREAM_PORT=P``, has QEMU forward exactly that guest address to the host port,
so the issuer is named by that address.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx

from hearth.bench.child import ChildServer
from hearth.bench.errors import BenchError
from hearth.vm.host import free_local_port
from hearth.vm.readiness import Deadline

GUEST_ISSUER_IP = "10.0.2.100"  # what Browser VMs dial; QEMU guestfwd sends it to the host port
CLIENT_ID = "hearth-test"
TEST_LOGIN = "alice"
TEST_PASSWORD = "wonderland"  # noqa: S105 (the test server's one account)
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0


@dataclass(eq=False, kw_only=True)
class OidcServer(ChildServer):
    """One running test OAuth server, started by ``OidcServer.start``; ``stop`` is idempotent."""

    what = "the OAuth server"
    stop_deadline_s = STOP_DEADLINE_S

    port: int
    issuer: str  # as Browser VMs see it

    @classmethod
    async def start(cls, *, server_dir: Path, log: Path) -> OidcServer:
        """Start ``node server.mjs`` in ``server_dir`` and wait until its discovery answers."""
        node = shutil.which("node")
        if node is None:
            raise BenchError(
                "hearth bench auth needs node (Node.js 20+) on PATH for its OAuth server"
            )
        if not (server_dir / "server.mjs").is_file():
            raise BenchError(
                f"no OAuth test server at {server_dir} (server.mjs); pass --oidc-server-dir a "
                "directory holding server.mjs and its node_modules, or leave it out to use "
                "the server shipped with Hearth"
            )
        if not (server_dir / "node_modules" / "oidc-provider").is_dir():
            raise BenchError(
                f"the OAuth test server's dependencies are not installed: run "
                f"npm ci --no-audit --no-fund in {server_dir}"
            )
        port = free_local_port()
        issuer = f"http://{GUEST_ISSUER_IP}:{port}"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PORT": str(port),
            "ISSUER": issuer,
            "CLIENT_ID": CLIENT_ID,
            "REDIRECT_URIS": "http://127.0.0.1/callback",
        }
        process = await cls.spawn([node, "server.mjs"], log=log, env=env, cwd=server_dir)
        return await cls(process=process, port=port, issuer=issuer, log=log).until_ready()

    async def _wait_ready(self) -> None:
        """Return once the server logged "listening" and its discovery names our issuer."""
        deadline = Deadline.after(START_DEADLINE_S)
        while b'"listening"' not in self.log.read_bytes():
            self.check_running()
            if deadline.expired:
                raise BenchError(
                    f"the OAuth server did not start in {START_DEADLINE_S:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            await asyncio.sleep(0.05)
        discovery_url = f"http://127.0.0.1:{self.port}/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                discovery = (await client.get(discovery_url)).json()
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise BenchError(f"the OAuth server's discovery failed: {exc}") from exc
        if discovery.get("issuer") != self.issuer:
            raise BenchError(
                f"the OAuth server names issuer {discovery.get('issuer')!r}, not {self.issuer!r}"
            )

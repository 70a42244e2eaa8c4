"""The bench's child servers (``ChildServer``: the controller, the OAuth server) are returned
running once ready; a start that fails, times out or is cancelled stops its child first."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from hearth.bench.child import ChildServer
from hearth.bench.controller import ControllerProcess
from hearth.bench.errors import BenchError
from hearth.bench.oidc import OidcServer


@dataclasses.dataclass(eq=False, kw_only=True)
class Sleeper(ChildServer):
    """A child (``sleep``) whose readiness is whatever the test makes it."""

    what = "the sleeper"
    stop_deadline_s = 2.0

    ready: asyncio.Future[None]

    async def _wait_ready(self) -> None:
        await self.ready


async def _sleeper(tmp_path: Path, ready: asyncio.Future[None]) -> Sleeper:
    log = tmp_path / "sleeper.log"
    process = await ChildServer.spawn(
        [shutil.which("sleep") or "/bin/sleep", "60"], log=log, env={}
    )
    return Sleeper(process=process, log=log, ready=ready)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_ready_child_is_returned_still_running(tmp_path: Path) -> None:
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready.set_result(None)
    server = await _sleeper(tmp_path, ready)
    try:
        assert await server.until_ready() is server
        assert server.process.returncode is None
    finally:
        await server.stop()


async def test_a_child_that_is_not_ready_is_stopped_before_the_error_propagates(
    tmp_path: Path,
) -> None:
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready.set_exception(BenchError("the sleeper did not start"))
    server = await _sleeper(tmp_path, ready)

    with pytest.raises(BenchError, match="did not start"):
        await server.until_ready()

    assert server.process.returncode is not None
    assert _gone(server.process.pid)


async def test_a_cancelled_start_stops_the_child(tmp_path: Path) -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    server = await _sleeper(tmp_path, never)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(server.until_ready(), timeout=0.2)

    assert server.process.returncode is not None
    assert _gone(server.process.pid)


# A stand-in for oidc_server/server.mjs: listens on 127.0.0.1:$PORT, says "listening" as the
# real one does, and serves a discovery document naming the issuer it is told to (ISSUER_SAID).
FAKE_SERVER = """
import http from "node:http";
import fs from "node:fs";
fs.writeFileSync("server.pid", String(process.pid));
const issuer = process.env.ISSUER_SAID || process.env.ISSUER;
http.createServer((req, res) => {
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ issuer }));
}).listen(Number(process.env.PORT), "127.0.0.1", () => console.log('{"event": "listening"}'));
"""


def _fake_server_dir(tmp_path: Path, *, issuer_said: str | None) -> Path:
    server_dir = tmp_path / "oidc"
    (server_dir / "node_modules" / "oidc-provider").mkdir(parents=True)
    source = FAKE_SERVER
    if issuer_said is not None:
        source = source.replace("process.env.ISSUER_SAID", repr(issuer_said))
    (server_dir / "server.mjs").write_text(source)
    return server_dir


needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs node on PATH")


@needs_node
async def test_oauth_server_is_returned_serving_its_issuer(tmp_path: Path) -> None:
    server_dir = _fake_server_dir(tmp_path, issuer_said=None)

    server = await OidcServer.start(server_dir=server_dir, log=tmp_path / "oidc.log")
    try:
        assert server.process.returncode is None
        assert server.issuer.endswith(f":{server.port}")
    finally:
        await server.stop()


@needs_node
async def test_oauth_server_naming_another_issuer_is_stopped(tmp_path: Path) -> None:
    server_dir = _fake_server_dir(tmp_path, issuer_said="http://elsewhere")

    with pytest.raises(BenchError, match="names issuer 'http://elsewhere'"):
        await OidcServer.start(server_dir=server_dir, log=tmp_path / "oidc.log")

    assert _gone(int((server_dir / "server.pid").read_text()))


async def test_controller_serving_another_store_than_it_was_given_is_stopped(
    tmp_path: Path,
) -> None:
    controller = await ControllerProcess.start(state_dir=tmp_path / "state")
    try:
        assert controller.process.returncode is None
        assert "database_url" not in repr(controller)  # it may hold a password
        # The same process, held by a bench that expects PostgreSQL: not the store it serves.
        expecting_postgres = dataclasses.replace(
            controller, database_url="postgresql://bench@127.0.0.1/hearth"
        )
        with pytest.raises(BenchError, match="serves store 'sqlite"):
            await expecting_postgres.until_ready()
        assert controller.process.returncode is not None
    finally:
        await controller.stop()

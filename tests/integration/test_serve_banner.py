"""``hearth serve``'s start line ("hearth controller on http://…") is printed once the
controller started and listens, never before a start that is refused: an operator who reads it
may rely on the controller being up. The real command line refused in its start, and the
server in process, refused or started."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from hearth.cli.server import ControllerServer
from hearth.errors import ConfigError
from tests.conftest import hearth_cli
from tests.integration.test_serve_unusable_store import _closed_port

BANNER = "hearth controller on "


async def test_a_start_refused_by_its_store_prints_no_banner(tmp_path: Path) -> None:
    # The database and state dir pass the checks before the start; the store's API-key hash
    # secret does not open (found as the controller opens its store), so the start is refused.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "key-hash.key").write_text("not base64 at all\n")
    env = {"HEARTH_STATE_DIR": str(state)}
    port = str(_closed_port())
    result = await asyncio.to_thread(hearth_cli, "serve", "--port", port, env=env, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert '"event": "serve_refused"' in result.stderr, output
    assert "error (config_invalid): master key file " in result.stderr, output
    assert "key-hash.key is not valid base64" in " ".join(result.stderr.split())
    assert BANNER not in output
    assert "Traceback" not in output


def _app(*, refuse: bool) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if refuse:
            raise ConfigError("refused for this test")
        yield

    return FastAPI(lifespan=lifespan)


async def test_a_refused_start_in_process_prints_no_banner(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = ControllerServer(_app(refuse=True), host="127.0.0.1", port=0, banner=BANNER + "x")
    with pytest.raises(ConfigError, match="refused for this test"):
        await server.serve()
    assert BANNER not in capsys.readouterr().out


async def test_a_started_controller_prints_its_banner_once_it_listens(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = ControllerServer(_app(refuse=False), host="127.0.0.1", port=0, banner=BANNER + "x")
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                assert BANNER not in capsys.readouterr().out
                await asyncio.sleep(0.01)
        assert capsys.readouterr().out.count(BANNER + "x") == 1
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 20)


async def test_a_port_in_use_is_refused_in_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    # Another program listens on the port: the start is refused naming the address and what
    # to do, exit 1, before the controller opens its vault or reconciles a VM (uvicorn would
    # bind only after the whole start, then exit 3 with its own message).
    state = tmp_path / "state"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {"HEARTH_STATE_DIR": str(state), "HEARTH_PORT": str(port)}
        result = await asyncio.to_thread(hearth_cli, "serve", env=env, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in output, output
    assert "stop it, or set HEARTH_PORT to another port" in output, output
    assert '"event": "serve_refused"' in result.stderr, output
    for started in ("master_key_loaded", "reconciled", "controller_started", BANNER):
        assert started not in output, output
    assert "Traceback" not in output
    assert not (state / "master.key").exists()

"""An open PostgreSQL connection whose server goes silent (its packets dropped, as a failover, a
firewall or a vanished host does) fails within seconds, on the store's own defaults: both when
the store sends on it and when it awaits an answer. Without ``POSTGRES_LIVENESS`` the first waits
out TCP's retransmits (about 15 minutes) and the second waits for ever.

Real parts: the store's engine runs in a network namespace this test makes, reaching the test
PostgreSQL through socat (the namespace's 127.0.0.1:P, a unix socket, the server); nftables in
the namespace then drops that port's packets, mid-connection.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import hearth
from hearth.store.database import POSTGRES_LIVENESS
from tests.conftest import require_tools
from tests.integration.store_fixtures import PostgresServer

PORT = 15432  # inside the namespace
# How long each case may take: the bounds it should end in (below) and a margin for a busy host.
CASE_DEADLINE_S = 90.0
# The store's connection gives up after tcp_user_timeout (15 s) plus a new connection's 10 s when
# sending; after keepalives_idle + count * interval (11 s) when awaiting an answer.
SENDING_BOUND_S = 40.0
AWAITING_BOUND_S = 30.0

CLIENT = """
import asyncio, sys, time
from sqlalchemy import text
from hearth.store.database import create_store_engine
from hearth.store.outage import is_outage

async def main(url: str, case: str) -> None:
    engine = create_store_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            print("ready", flush=True)
            if case == "awaiting":  # the answer is dropped once it comes
                started = time.monotonic()
                try:
                    await conn.execute(text("SELECT pg_sleep(3)"))
                    print("answered", flush=True)
                except Exception as exc:
                    print("ended", round(time.monotonic() - started, 1), type(exc).__name__,
                          is_outage(exc), flush=True)
                return
        sys.stdin.readline()  # the packets are dropped now; the pooled connection is sent on
        started = time.monotonic()
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            print("answered", flush=True)
        except Exception as exc:
            print("ended", round(time.monotonic() - started, 1), type(exc).__name__,
                  is_outage(exc), flush=True)
    finally:
        await engine.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@dataclass
class Namespace:
    """A network namespace of this test's, the test PostgreSQL reachable at 127.0.0.1:PORT in it."""

    name: str
    url: str  # the store's URL from inside

    def drop_the_port(self) -> None:
        """From now on every packet to or from PORT in the namespace is dropped."""
        ruleset = (
            "table inet silence {\n"
            "  chain out { type filter hook output priority 0; policy accept;\n"
            f"    tcp dport {PORT} drop\n    tcp sport {PORT} drop\n  }}\n}}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"],
            input=ruleset.encode(),
            check=True,
            timeout=30,
        )


def _socat(*argv: str, netns: str | None = None) -> subprocess.Popen[bytes]:
    """socat with ``argv``, in ``netns`` if given; a session of its own, so that its children
    (one per connection, stuck on the silenced ones) are killed with it."""
    inside = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.Popen(
        [*inside, "socat", *argv],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture
def namespace(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[Namespace]:
    require_tools("ip", "nft", "socat")
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace")
    admin = postgres_server.admin_url
    assert admin.host, admin
    assert admin.port, admin
    name = f"hearth-t-{secrets.token_hex(4)}"
    sock = tmp_path / "pg.sock"
    processes: list[subprocess.Popen[bytes]] = []
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        processes.append(_socat(f"UNIX-LISTEN:{sock},fork", f"TCP:{admin.host}:{admin.port}"))
        processes.append(
            _socat(
                f"TCP-LISTEN:{PORT},bind=127.0.0.1,reuseaddr,fork",
                f"UNIX-CONNECT:{sock}",
                netns=name,
            )
        )
        url = admin.set(host="127.0.0.1", port=PORT).render_as_string(hide_password=False)
        yield Namespace(name, url)
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def _client(namespace: Namespace, case: str, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    source = str(Path(hearth.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        ["ip", "netns", "exec", namespace.name, sys.executable, str(script), namespace.url, case],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _until_ready(client: subprocess.Popen[str]) -> None:
    assert client.stdout is not None
    line = client.stdout.readline()
    if line.strip() != "ready":
        client.kill()
        _, err = client.communicate(timeout=10)
        pytest.fail(f"the store in the namespace did not connect: {line!r} {err[-2000:]}")


def _ending(client: subprocess.Popen[str]) -> tuple[float, str, str]:
    """The client's last line, ``ended <seconds> <error> <outage>``, once it exits; failed if it
    has not within ``CASE_DEADLINE_S``."""
    try:
        out, err = client.communicate(timeout=CASE_DEADLINE_S)
    except subprocess.TimeoutExpired:
        client.kill()
        client.communicate(timeout=10)
        pytest.fail(f"the store still waited on a silent server after {CASE_DEADLINE_S:g} s")
    assert client.returncode == 0, err[-2000:]
    word, seconds, error, outage = out.split()
    assert word == "ended", out
    return float(seconds), error, outage


def test_the_defaults_bound_a_silent_server() -> None:
    # The cases below rely on these: the URLs they use set none of them.
    assert POSTGRES_LIVENESS["tcp_user_timeout"] / 1000 < SENDING_BOUND_S - 10
    idle = POSTGRES_LIVENESS["keepalives_idle"]
    probes = POSTGRES_LIVENESS["keepalives_count"] * POSTGRES_LIVENESS["keepalives_interval"]
    assert idle + probes < AWAITING_BOUND_S


def test_a_connection_sent_on_after_its_server_went_silent_fails_in_seconds(
    namespace: Namespace, tmp_path: Path
) -> None:
    client = _client(namespace, "sending", tmp_path)
    _until_ready(client)
    namespace.drop_the_port()
    assert client.stdin is not None
    client.stdin.write("go\n")
    client.stdin.flush()
    seconds, error, outage = _ending(client)
    assert seconds < SENDING_BOUND_S, (seconds, error)
    assert error in {"OperationalError", "DBAPIError"}, error
    assert outage == "True"  # a writer that must not lose its work waits it out


def test_a_connection_awaiting_its_answer_when_the_server_went_silent_fails_in_seconds(
    namespace: Namespace, tmp_path: Path
) -> None:
    client = _client(namespace, "awaiting", tmp_path)
    _until_ready(client)
    time.sleep(1.0)  # the query is out and acknowledged; its answer comes at 3 s
    namespace.drop_the_port()
    seconds, error, outage = _ending(client)
    assert seconds < AWAITING_BOUND_S, (seconds, error)
    assert error in {"OperationalError", "DBAPIError"}, error
    assert outage == "True"

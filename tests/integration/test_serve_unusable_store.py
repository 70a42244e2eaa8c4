"""``hearth serve`` on a database or state dir it cannot use (PostgreSQL not listening, not
answering within its connect timeout, or refusing the password, a SQLite file in a directory
that does not exist or that is not a database, a file where the state dir should be): one error
line naming the setting and the cause, never the URL's password, a ``serve_refused`` event in
the log, exit 1, and no traceback. The real command line, refused before anything starts."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import hearth_cli
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import PostgresServer
from tests.integration.test_store_connect_timeout import SHORT_S
from tests.integration.test_store_connect_timeout import silent_port as silent_port  # fixture

PASSWORD = "not-the-password-4b1d"


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # A VMM that cannot run here: a serve that got past the store would stop there (with
    # another message) rather than start a controller in this test.
    env = {
        "HEARTH_STATE_DIR": str(tmp_path / "state"),
        "HEARTH_VMM": "firecracker",
        "HEARTH_FIRECRACKER_BIN": str(tmp_path / "no-firecracker"),
        **env,
    }
    args = ("serve", "--port", str(_closed_port()))
    return await asyncio.to_thread(hearth_cli, *args, env=env, timeout=60)


def _refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The error line ``serve`` printed (as one line: the console wraps long ones)."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "cannot run on this host" not in output, "refused before the VMM check"
    assert '"event": "serve_refused"' in result.stderr, output
    start = result.stderr.find("error (config_invalid): ")
    assert start >= 0, output
    return " ".join(result.stderr[start:].split())


async def test_postgresql_not_listening_names_the_url_without_its_password(
    tmp_path: Path,
) -> None:
    port = _closed_port()
    url = f"postgresql://hearth:{PASSWORD}@127.0.0.1:{port}/hearth"
    result = await _serve(tmp_path, HEARTH_DATABASE_URL=url)
    line = _refusal(result)
    assert line.startswith(
        f"error (config_invalid): HEARTH_DATABASE_URL: cannot open the database "
        f"postgresql://***@127.0.0.1:{port}/hearth: "
    ), line
    assert "Connection refused" in line
    assert PASSWORD not in result.stdout + result.stderr


async def test_postgresql_not_answering_says_it_did_not_answer_in_time(
    tmp_path: Path, silent_port: int
) -> None:
    # The URL's connect_timeout keeps the test short; the store's own bound is tested with it.
    url = f"postgresql://hearth:{PASSWORD}@127.0.0.1:{silent_port}/hearth?connect_timeout={SHORT_S}"
    result = await _serve(tmp_path, HEARTH_DATABASE_URL=url)
    assert _refusal(result) == (
        f"error (config_invalid): HEARTH_DATABASE_URL: cannot open the database "
        f"postgresql://***@127.0.0.1:{silent_port}/hearth?connect_timeout={SHORT_S}: "
        f"the server did not answer within {SHORT_S} s "
        "(a connect_timeout=<seconds> in the URL waits longer)"
    )
    assert PASSWORD not in result.stdout + result.stderr


async def test_postgresql_refusing_the_password_names_the_cause_not_the_password(
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    url = postgres_server.admin_url.set(password=PASSWORD)
    result = await _serve(tmp_path, HEARTH_DATABASE_URL=url.render_as_string(hide_password=False))
    line = _refusal(result)
    assert line.startswith("error (config_invalid): HEARTH_DATABASE_URL: cannot open the database")
    assert "password authentication failed" in line
    assert PASSWORD not in result.stdout + result.stderr


async def test_sqlite_in_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    database = tmp_path / "missing" / "hearth.db"
    result = await _serve(tmp_path, HEARTH_DATABASE_URL=f"sqlite:///{database}")
    assert _refusal(result) == (
        f"error (config_invalid): HEARTH_DATABASE_URL: cannot open the database "
        f"sqlite:///{database}: its directory {database.parent} does not exist"
    )
    assert not database.parent.exists()


@pytest.mark.parametrize(
    ("what", "cause"),
    [("a directory", "unable to open database file"), ("text", "file is not a database")],
)
async def test_sqlite_file_that_is_not_a_database(tmp_path: Path, what: str, cause: str) -> None:
    database = tmp_path / "hearth.db"
    if what == "a directory":
        database.mkdir()
    else:
        database.write_text("not a database\n")
    result = await _serve(tmp_path, HEARTH_DATABASE_URL=f"sqlite:///{database}")
    assert _refusal(result) == (
        f"error (config_invalid): HEARTH_DATABASE_URL: cannot open the database "
        f"sqlite:///{database}: {cause}"
    )


async def test_the_state_dirs_own_database_unusable_names_the_state_dir(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "hearth.db").write_text("not a database\n")
    line = _refusal(await _serve(tmp_path))
    assert line.startswith("error (config_invalid): HEARTH_STATE_DIR: cannot open the database ")
    assert line.endswith("/state/hearth.db: file is not a database"), line


@pytest.mark.parametrize(
    ("state_dir", "cause"), [("file", "File exists"), ("file/state", "Not a directory")]
)
async def test_a_file_in_the_way_of_the_state_dir_names_it(
    tmp_path: Path, state_dir: str, cause: str
) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / state_dir
    result = await _serve(tmp_path, HEARTH_STATE_DIR=str(path))
    assert _refusal(result) == (
        f"error (config_invalid): HEARTH_STATE_DIR: cannot make the state dir {path}: {cause}"
    )

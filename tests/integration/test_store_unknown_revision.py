"""A database at a schema revision this Hearth does not know (a newer Hearth wrote it, then the
operator downgraded): ``Store.open``, ``hearth serve`` and the ``hearth keys`` commands refuse
it with one error line naming the revision and what to do, no traceback, and change nothing in
it. On SQLite and PostgreSQL; the command line for real."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from hearth.errors import ConfigError
from hearth.sdk._errors import shown_url
from hearth.store import Store, alembic_config, create_store_engine
from tests.conftest import hearth_cli
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.test_serve_unusable_store import _refusal, _serve

UNKNOWN = "ffffffffffff"


def _refused_because() -> str:
    newest = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return (
        f"it is at schema revision '{UNKNOWN}', which this Hearth does not know (its newest is "
        f"'{newest}'): it was likely written by a newer Hearth, and downgrading is not "
        "supported; upgrade Hearth or restore a backup. Nothing in the database was changed"
    )


def _schema(conn: Connection) -> dict[str, list[str]]:
    found = inspect(conn)
    return {
        table: sorted(c["name"] for c in found.get_columns(table))
        for table in found.get_table_names()
    }


async def _written_by_a_newer_hearth(url: str) -> dict[str, object]:
    """Set ``url``'s revision to one this Hearth does not know; what the database then holds."""
    engine = create_store_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": UNKNOWN})
    finally:
        await engine.dispose()
    return await _contents(url)


async def _contents(url: str) -> dict[str, object]:
    """The database's tables with their columns, its revision and its API keys."""
    engine = create_store_engine(url)
    try:
        async with engine.connect() as conn:
            schema = await conn.run_sync(_schema)
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            keys = (await conn.execute(text("SELECT id FROM api_keys ORDER BY id"))).all()
    finally:
        await engine.dispose()
    return {"schema": schema, "versions": versions, "keys": keys}


async def test_store_open_refuses_it_naming_the_revision_and_the_database(
    database_url: str,
) -> None:
    before = await _written_by_a_newer_hearth(database_url)
    with pytest.raises(ConfigError) as refused:
        await Store.open(database_url)
    shown = create_store_engine(database_url).url.render_as_string(hide_password=True)
    assert refused.value.message == f"cannot open the database {shown}: {_refused_because()}"
    assert await _contents(database_url) == before


async def test_serve_refuses_it_with_one_line_and_exit_1(database_url: str, tmp_path: Path) -> None:
    before = await _written_by_a_newer_hearth(database_url)
    result = await _serve(tmp_path, HEARTH_DATABASE_URL=database_url)
    assert _refusal(result) == (
        f"error (config_invalid): HEARTH_DATABASE_URL: cannot open the database "
        f"{shown_url(database_url)}: {_refused_because()}"
    )
    password = create_store_engine(database_url).url.password
    assert not password or str(password) not in result.stdout + result.stderr
    assert await _contents(database_url) == before


@pytest.mark.parametrize("command", [["create", "--user", "bob"], ["rotate-master"]])
async def test_keys_commands_refuse_it_without_a_traceback(
    database_url: str, tmp_path: Path, command: list[str]
) -> None:
    before = await _written_by_a_newer_hearth(database_url)
    env = {"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_DATABASE_URL": database_url}
    result = await asyncio.to_thread(hearth_cli, "keys", *command, env=env, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    shown = create_store_engine(database_url).url.render_as_string(hide_password=True)
    assert " ".join(result.stderr.split()) == (
        f"error (config_invalid): cannot open the database {shown}: {_refused_because()}"
    )
    assert await _contents(database_url) == before


async def test_doctor_says_why_the_database_cannot_be_opened(
    database_url: str, tmp_path: Path
) -> None:
    """``hearth doctor``'s database row gives serve's reason (it named only the error's class)."""
    before = await _written_by_a_newer_hearth(database_url)
    env = {
        "HEARTH_STATE_DIR": str(tmp_path / "state"),
        "HEARTH_DATABASE_URL": database_url,
    }
    result = await asyncio.to_thread(hearth_cli, "doctor", env=env, timeout=120)
    # The table's cells wrap: its rows read as one text once its rules are taken out.
    output = " ".join(result.stdout.replace("│", " ").split())
    assert result.returncode == 1, result.stdout + result.stderr
    shown = create_store_engine(database_url).url.render_as_string(hide_password=True)
    assert f"cannot open the database {shown}: {_refused_because()}" in output
    password = create_store_engine(database_url).url.password
    assert not password or str(password) not in result.stdout + result.stderr
    assert await _contents(database_url) == before

"""``hearth serve`` and ``hearth keys …``: run the controller; mint keys against its store."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import uvicorn
from fastapi import FastAPI
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from starlette.types import Message, Receive, Scope, Send

from hearth.api.app import create_app
from hearth.api.streams import stop_streams
from hearth.cli.common import console, fail, fail_sdk, load_settings, plain
from hearth.cli.listeners import listening_sockets
from hearth.config import Settings
from hearth.control.bootstrap import ADMIN_USER, ensure_admin_key, open_store
from hearth.credentials.forget import (
    Forgotten,
    LostKey,
    forget_master_key,
    keys_at_hand,
    what_is_lost,
)
from hearth.credentials.keys import KEYRING_DIR
from hearth.credentials.reseal import ResealReport, reseal_everything
from hearth.credentials.vault import CredentialVault
from hearth.errors import ConfigError, Conflict, HearthError, InvalidInput
from hearth.events.log import EventLog
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.sdk._errors import shown_url
from hearth.state_dir_lock import CONTROLLER, StateDirLock
from hearth.store import Store, create_store_engine
from hearth.store.controller_lease import ControllerLease
from hearth.store.database import connect_timed_out, connect_timeout_s
from hearth.store.migrate import check_revision_known
from hearth.store.repositories.users import check_new_user_id
from hearth.vm.select import check_vmm

_log = get_logger("cli.server")

# The most open files ``serve`` asks for (Linux's default ceiling, ``fs.nr_open``).
_MOST_OPEN_FILES = 1 << 20
# How long a stopping controller waits for the requests still running (a VM's boot, an upload)
# before it cancels them and stops; its event streams end at once and do not count.
GRACEFUL_SHUTDOWN_S = 10

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
_T = TypeVar("_T")


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535)] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Overrides HEARTH_STATE_DIR.")] = None,
    destroy_on_exit: Annotated[
        bool, typer.Option(help="Destroy every VM on shutdown (default: keep them running).")
    ] = False,
) -> None:
    """Run the controller (REST API, reconciliation, monitor, warm pool)."""
    # Whatever the controller creates (database, logs, keys, VM files) is its owner's alone.
    os.umask(0o077)
    raise_open_file_limit()
    settings = _with(load_settings(), state_dir)
    settings = settings.with_overrides(host=host or settings.host, port=port or settings.port)
    state_setting = "--state-dir" if state_dir is not None else "HEARTH_STATE_DIR"
    setting = {
        "host": "--host" if host is not None else "HEARTH_HOST",
        "port": "--port" if port is not None else "HEARTH_PORT",
    }
    # A state dir or database that cannot be used, another controller (or a master-key
    # rotation) on this state dir, or another controller on its database, is refused now,
    # before anything starts; the controller then holds both for its life (``open_hearth``).
    try:
        _state_dir_is_free(settings, setting=state_setting)
        asyncio.run(
            _database_is_free(
                settings, setting="HEARTH_DATABASE_URL" if settings.database_url else state_setting
            )
        )
    except HearthError as exc:
        _refuse(exc)
    # A VMM that cannot run here is refused now, with the reason, not at the first VM.
    check = check_vmm(settings)
    if not check.ok:
        _refuse(
            ConfigError(f"HEARTH_VMM={check.vmm.value} cannot run on this host: {check.reason}")
        )
    # The address is taken now: one in use is refused before the controller reconciles a VM
    # or its pool boots one (uvicorn binds only after the app has started).
    try:
        listeners = listening_sockets(settings.host, settings.port, setting=setting)
    except HearthError as exc:
        _refuse(exc)
    app = create_app(settings, destroy_on_exit=destroy_on_exit)
    # Said once the app started and listens: a start refused after this point says only that.
    banner = (
        f"hearth controller on http://{settings.host}:{settings.port} (state {settings.state_dir})"
    )
    server = ControllerServer(app, host=settings.host, port=settings.port, banner=banner)
    try:
        with contextlib.ExitStack() as held:
            for listener in listeners:
                held.enter_context(contextlib.closing(listener))
            asyncio.run(server.serve(sockets=listeners))
    except HearthError as exc:  # the start refused (a wrong master key, ...): nothing runs
        _refuse(exc)


def _refuse(exc: HearthError) -> NoReturn:
    """Refuse to start the controller: an event in the log, one line on stderr, exit 1."""
    _log.error("serve_refused", code=exc.code, reason=exc.message)
    fail(exc)


def raise_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard one (at most ``_MOST_OPEN_FILES``): a
    busy VM holds up to 64 egress tunnels of two descriptors each, besides its agent's, its
    viewers' and the store's sockets, and the usual soft limit of 1024 runs out at about eight
    such VMs. The hard limit is the operator's (a service manager's ``LimitNOFILE``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    most = _MOST_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, _MOST_OPEN_FILES)
    if soft == resource.RLIM_INFINITY or soft >= most:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (most, hard))


class _RefusalKept:
    """The controller's app as uvicorn runs it, keeping the HearthError that refuses its start
    (a wrong master key, a key file it cannot read, ...) for ``serve`` to show as one line,
    where Starlette would hand uvicorn the error's traceback to log."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.refusal: HearthError | None = None
        starting = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
            started = False
            try:
                async with starting(app) as state:
                    started = True
                    yield state
            except HearthError as exc:
                if not started:
                    self.refusal = exc
                raise

        app.router.lifespan_context = lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def told(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.refusal is not None:
                message = {"type": message["type"], "message": ""}  # not the traceback
            await send(message)

        await self.app(scope, receive, told if scope["type"] == "lifespan" else send)


class ControllerServer(uvicorn.Server):
    """uvicorn serving the controller's app. SIGTERM/SIGINT end in a clean exit 0 instead of
    re-raising the signal. Once it begins to stop, every event stream of the app ends (a client
    resumes it later, or from another controller), so that it waits only for the requests still
    running, and those at most ``GRACEFUL_SHUTDOWN_S``; a second signal during that wait ends it
    at once, and skips the app's teardown (uvicorn's own "force quit"). A HearthError that
    refuses the app's start comes out of ``serve`` as it is (uvicorn would exit 3). ``banner``,
    if given, is printed once the app started and its port listens, never before a refusal."""

    def __init__(self, app: FastAPI, *, host: str, port: int, banner: str | None = None) -> None:
        self._run = _RefusalKept(app)
        config = uvicorn.Config(
            self._run,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        super().__init__(config)
        self._app = app
        self._banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does; a start the app refused raises its HearthError."""
        try:
            await super().startup(sockets)
        except SystemExit:
            if self._run.refusal is not None:
                raise self._run.refusal from None
            raise
        if self.started and self._banner is not None:
            console.print(plain(self._banner))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first signal asks to stop; another one (of either kind) forces it."""
        if self.should_exit:
            self.force_exit = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop as uvicorn does, the app's streams ended first: uvicorn then waits for every
        connection, and a stream that follows the event log never ends by itself."""
        stop_streams(self._app)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _with(settings: Settings, state_dir: Path | None) -> Settings:
    if state_dir is None:
        return settings
    return settings.with_overrides(state_dir=state_dir.absolute())


def _state_dir_is_free(settings: Settings, *, setting: str) -> None:
    """Conflict if another controller holds the state dir; ConfigError naming ``setting``
    (the state dir's) if it cannot be made or locked (a file in the way, not writable)."""
    try:
        StateDirLock.take(settings.state_dir, holder=CONTROLLER).close()
    except ConfigError as exc:
        raise ConfigError(f"{setting}: {exc.message}") from exc


async def _database_is_free(settings: Settings, *, setting: str) -> None:
    """Conflict if another controller holds the database ``settings`` name; ConfigError naming
    ``setting`` (the database's) and why if it cannot be reached or opened, or is at a revision
    this Hearth does not know (a newer one wrote it). It is neither made nor migrated here: a
    serve refused later must leave nothing behind."""
    url = settings.database()
    try:
        # A SQLite database's lease is a file beside it, which says nothing of the database.
        if url.startswith("sqlite") and not _sqlite_is_readable(Path(make_url(url).database or "")):
            return  # no controller holds a database not made yet
        engine = create_store_engine(url)
        try:
            await (await ControllerLease.take(engine)).close()
            await check_revision_known(engine)
        finally:
            await engine.dispose()
    except Conflict:
        raise
    except (HearthError, SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise ConfigError(
            f"{setting}: cannot open the database {shown_url(url)}: {why_unopened(exc, url)}"
        ) from exc


def _sqlite_is_readable(database: Path) -> bool:
    """Whether SQLite file ``database`` exists (and reads as a database); False if not made
    yet, but could be. sqlite3's error (not a database, cannot be opened), or an OSError if
    it could not be made: its directory missing or not writable."""
    if not database.exists():
        directory = database.parent
        if not directory.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"its directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"its directory {directory} is not writable")
        return False
    # The standard driver, not aiosqlite: a connection that fails in aiosqlite's thread may
    # report to an event loop that is closed by then (a traceback after the error line).
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    return True


def why_unopened(exc: BaseException, url: str) -> str:
    """Why the database could not be opened, in one line: the driver's words rather than
    SQLAlchemy's wrapping of them, and never the URL's password."""
    if connect_timed_out(exc):  # the driver says only "connection timeout expired"
        cause = (
            f"the server did not answer within {connect_timeout_s(url)} s "
            "(a connect_timeout=<seconds> in the URL waits longer)"
        )
    elif isinstance(exc, HearthError):
        cause = exc.message
    elif isinstance(exc, DBAPIError) and exc.orig is not None:
        cause = str(exc.orig)
    elif isinstance(exc, sqlite3.Error):
        cause = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        cause = exc.strerror
    else:
        cause = f"{type(exc).__name__}: {exc}"
    cause = " ".join(cause.split())
    with contextlib.suppress(ArgumentError, ValueError):  # an unparsable URL: said so already
        password = make_url(url).password
        if password:
            cause = cause.replace(str(password), "***")
    return cause


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option(help="The user the key acts for.")],
    admin: Annotated[
        bool, typer.Option(help="An admin key (sees and manages everything).")
    ] = False,
    state_dir: Annotated[Path | None, typer.Option(help="Overrides HEARTH_STATE_DIR.")] = None,
) -> None:
    """Mint an API key straight in the store; it is printed once and stored hashed."""
    settings = _with(load_settings(), state_dir)
    try:
        check_new_user_id(user)
    except HearthError as exc:
        fail(exc)

    async def mint() -> str:
        store = await open_store(settings)
        try:
            await ensure_admin_key(store, settings)
            plaintext, _ = await store.api_keys.create(user, admin=admin)
            return plaintext
        finally:
            await store.close()

    try:
        key = asyncio.run(mint())
    except HearthError as exc:
        fail(exc)
    console.print(plain(key))


@keys_app.command("rotate-master")
def keys_rotate_master(
    state_dir: Annotated[Path | None, typer.Option(help="Overrides HEARTH_STATE_DIR.")] = None,
) -> None:
    """Make a new master key and re-encrypt everything sealed under the old one: stored
    credentials, VM agent tokens and keys, workspace keys, webhook secrets. The controller
    must be stopped (it would keep sealing under the old key); exit 1 naming what stays under
    an older key."""
    settings = _with(load_settings(), state_dir)

    async def rotate(store: Store) -> tuple[str, ResealReport]:
        vault = CredentialVault.load(
            settings.state_dir, settings.master_key, sealed=await store.sealed.count_by_key()
        )
        key_id = vault.rotate(settings.state_dir)
        return key_id, await reseal_everything(store, vault)

    key_id, report = _alone(settings, "the master-key rotation", rotate)
    done = [
        f"{count} {what}"
        for count, what in [
            (report.documents, "credential(s)"),
            (report.others, "other sealed secret(s)"),
        ]
        if count is not None
    ]
    console.print(
        plain(f"master key is now {key_id}; re-encrypted {' and '.join(done) or 'nothing'}")
    )
    if not report.complete:
        problems = list(report.failures)
        if report.left:
            problems.append(
                f"{report.left} sealed secret(s) are still under an older key: keep the older "
                f"keys in {settings.state_dir / KEYRING_DIR} until a rerun of `hearth keys "
                "rotate-master` leaves none"
            )
        fail_sdk("reseal_incomplete", "; ".join(problems))


@keys_app.command("forget-master")
def keys_forget_master(
    key_id: Annotated[
        str,
        typer.Argument(
            metavar="KEY_ID", help="The lost key's id, as `hearth serve` names it when it refuses."
        ),
    ],
    state_dir: Annotated[Path | None, typer.Option(help="Overrides HEARTH_STATE_DIR.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Drop without asking.")] = False,
) -> None:
    """Drop everything sealed under the lost master key KEY_ID, so that the controller starts
    again: stored credentials (removed: their users log in again), VMs whose agent token or
    disk keys it sealed, or that hold a workspace it sealed (failed), workspaces (deleted, with
    their files), webhooks (deleted). The controller must be stopped; refused, with nothing
    changed, when the key is at hand or nothing is sealed under it. Asks first on a terminal;
    elsewhere needs --yes."""
    settings = _with(load_settings(), state_dir)

    async def forget(store: Store) -> Forgotten:
        keys = keys_at_hand(settings.state_dir, settings.master_key)
        lost = await what_is_lost(store, key_id, keys=keys)
        _confirmed(lost, yes=yes)
        events = EventLog(store=store, settings=settings, metrics=ControllerMetrics())
        return await forget_master_key(store, lost, keys=keys, events=events)

    for line in _alone(settings, "forgetting a master key", forget).lines():
        console.print(plain(line), soft_wrap=True)  # one line per kind, however long


def _confirmed(lost: LostKey, *, yes: bool) -> None:
    """Go on with dropping what ``lost`` holds only if ``yes``, or the operator says so on a
    terminal; InvalidInput (nothing changed) otherwise."""
    what = f"what is sealed under master key {lost.key_id}: {lost.summary()}"
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput(f"this drops {what}; pass --yes to confirm (nothing changed)")
    if not typer.confirm(f"Drop {what}? This cannot be undone", default=False):
        raise InvalidInput("not confirmed: nothing changed")


def _alone(settings: Settings, holder: str, work: Callable[[Store], Awaitable[_T]]) -> _T:
    """``work`` on the store while no controller runs: the state dir held for ``holder`` (as a
    controller holds it) and the database's controller lease taken (so a controller on another
    state dir sharing the database refuses it too); a HearthError exits 1 with its message."""

    async def run() -> _T:
        store = await Store.open(settings.database())
        try:
            lease = await ControllerLease.take(store.engine)
            try:
                return await work(store)
            finally:
                await lease.close()
        finally:
            await store.close()

    try:
        with contextlib.closing(StateDirLock.take(settings.state_dir, holder=holder)):
            return asyncio.run(run())
    except HearthError as exc:
        fail(exc)


__all__ = ["ADMIN_USER", "GRACEFUL_SHUTDOWN_S", "ControllerServer", "keys_app", "serve"]

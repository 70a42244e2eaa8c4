"""The app factory: lifespan (store, reconciliation, monitor, pool), middleware, routes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth import __version__
from hearth.api.context import Controller
from hearth.api.errors import install_error_handlers
from hearth.api.guard import KeyGuard
from hearth.api.routes import auth as auth_routes
from hearth.api.routes import keys, system, view, vms
from hearth.api.routes.view import NOVNC_DIR
from hearth.auth.flow import AuthFlow
from hearth.config import Settings
from hearth.control.images import ImageCatalog
from hearth.control.pool import WarmPool
from hearth.control.quotas import Quotas
from hearth.control.vms import VmService
from hearth.credentials.keys import load_key_hash_secret
from hearth.credentials.pullback import PullBack
from hearth.credentials.service import CredentialService
from hearth.credentials.vault import CredentialVault
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.store import Store
from hearth.vm.qemu.accel import detect_accel
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.types import VmType

_log = get_logger("api")
ADMIN_USER = "admin"
ADMIN_KEY_FILE = "admin.key"


async def open_store(settings: Settings) -> Store:
    """The controller's store: its state dir made private, the schema migrated, and the
    API-key hash secret loaded (``HEARTH_KEY_HASH_SECRET`` or the state dir's file)."""
    settings.prepare_state_dir()
    secret = load_key_hash_secret(settings.state_dir, settings.key_hash_secret)
    return await Store.open(settings.database(), key_secret=secret)


async def ensure_admin_key(store: Store, settings: Settings) -> Path | None:
    """Import ``HEARTH_ADMIN_KEY``, or make sure ``admin.key`` holds a working admin key.

    On first start a key is minted into a new 0600 file. A stale file (its key revoked, or
    written for another database) never stops the controller: a new admin key replaces it, and
    the log says so. Returns the file's path, or None when no file is in use.
    """
    if settings.admin_key:
        await store.api_keys.import_key(settings.admin_key, user_id=ADMIN_USER, admin=True)
        return None
    path = settings.state_dir / ADMIN_KEY_FILE
    if path.exists():
        record = await store.api_keys.authenticate(path.read_text().strip())
        if record is not None and record.is_admin and not record.is_revoked:
            return path
        stale = True
    elif any(k.is_admin and not k.is_revoked for k in await store.api_keys.list()):
        return None  # admin keys exist and the operator removed the file: nothing to write
    else:
        stale = False
    plaintext, record = await store.api_keys.create(ADMIN_USER, admin=True)
    _write_private(path, plaintext + "\n")
    if stale:
        _log.warning(
            "admin_key_replaced",
            path=str(path),
            key_id=record.id,
            reason="the key in the file is revoked or unknown to this database",
        )
    else:
        _log.info("admin_key_created", path=str(path), key_id=record.id)
    return path


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file holding ``text``."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class ObserveRequests:
    """Every HTTP request gets an id (``X-Request-Id``, bound into the log context) and is counted
    and timed in the metrics under its route template.

    A plain ASGI middleware: unlike ``@app.middleware("http")`` it adds no task and no stream per
    request, which is most of what that wrapper costs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = Headers(scope=scope).get("x-request-id") or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            ctl: Controller | None = getattr(scope["app"].state, "controller", None)
            if ctl is not None:
                ctl.metrics.http_requests.labels(
                    method=scope["method"], route=template, status=str(status)
                ).inc()
                ctl.metrics.http_latency.labels(route=template).observe(
                    time.perf_counter() - started
                )
            structlog.contextvars.unbind_contextvars("request_id")


def create_app(
    settings: Settings,
    *,
    backend: QemuBackend | None = None,
    images: ImageCatalog | None = None,
    quotas: Quotas | None = None,
    destroy_on_exit: bool = False,
    monitor_interval_s: float = 1.0,
) -> FastAPI:
    """Build the controller app; its parts start in the lifespan and stop on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await open_store(settings)
        try:
            metrics = ControllerMetrics()
            service = VmService(
                settings=settings,
                store=store,
                backend=backend
                or QemuBackend(
                    state_dir=settings.state_dir,
                    accel=detect_accel(override=settings.qemu_accel),
                    network_pool=settings.network_pool,
                    template_dir=settings.template_dir,
                ),
                images=images or ImageCatalog(settings),
                metrics=metrics,
                quotas=quotas or Quotas.from_settings(settings),
            )
            await ensure_admin_key(store, settings)
            vault = CredentialVault.load(
                settings.state_dir, {"HEARTH_MASTER_KEY": settings.master_key or ""}
            )
            credentials = CredentialService(store, vault)
            service.before_destroy.append(PullBack(store, credentials, service).before_destroy)
            auth = AuthFlow(settings=settings, store=store, vms=service, credentials=credentials)
            await service.reconcile()
            await auth.recover()
            app.state.controller = Controller(
                settings=settings,
                store=store,
                vms=service,
                metrics=metrics,
                credentials=credentials,
                auth=auth,
            )
        except BaseException:
            # Nothing else holds the store yet: a failed start must not leave it open.
            await store.close()
            raise
        pool = WarmPool(
            service, sizes={VmType.CLI: settings.pool_cli, VmType.BROWSER: settings.pool_browser}
        )
        service.pool = pool if pool.enabled else None
        monitor = asyncio.create_task(service.monitor(monitor_interval_s))
        if pool.enabled:
            pool.start()
        _log.info("controller_started", version=__version__, store=store.url_for_log())
        if settings.browser_devtools:
            _log.warning(
                "browser_devtools_forwarded",
                message="HEARTH_BROWSER_DEVTOOLS=1: every Browser VM's DevTools is forwarded to a "
                "loopback port, where any local process can drive the login browser (benchmarks "
                "and tests only)",
            )
        try:
            yield
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            await auth.shutdown()
            await pool.stop()
            await service.shutdown(destroy_vms=destroy_on_exit)
            await store.close()
            _log.info("controller_stopped")

    app = FastAPI(
        title="Hearth",
        version=__version__,
        description="Isolated microVMs for AI coding CLIs. Every route but /health needs "
        '`Authorization: Bearer <key>`. Errors are `{"error": {"code", "message"}}`.',
        lifespan=lifespan,
    )
    install_error_handlers(app)

    # Starlette runs the middleware added last first: every request gets its id, then its key
    # and body size are checked, before any route reads the body.
    app.add_middleware(KeyGuard, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(ObserveRequests)
    app.include_router(system.router)
    app.include_router(vms.router)
    app.include_router(keys.router)
    app.include_router(auth_routes.router)
    app.include_router(view.router)
    if NOVNC_DIR.is_dir():
        app.mount("/novnc", StaticFiles(directory=NOVNC_DIR), name="novnc")
    return app

"""The app factory: the composition root entered in the lifespan, middleware, routes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth import __version__
from hearth.agent_bundle import AgentBundle
from hearth.api.context import Controller
from hearth.api.errors import install_error_handlers
from hearth.api.guard import KeyGuard
from hearth.api.nul import RefuseNul
from hearth.api.routes import agent as agent_routes
from hearth.api.routes import auth as auth_routes
from hearth.api.routes import credentials as credential_routes
from hearth.api.routes import events, execs, files, keys, network, system, view, vms
from hearth.api.routes import runs as run_routes
from hearth.api.routes import terminal as terminal_routes
from hearth.api.routes import workspaces as workspace_routes
from hearth.config import Settings
from hearth.control.quotas import Quotas
from hearth.metrics import HTTP_METHODS
from hearth.node.local import ImageSource
from hearth.runtime import open_hearth
from hearth.terminal_page import PAGE_DIR, xterm_dir
from hearth.vm.backend import VmBackend


class ObserveRequests:
    """Every HTTP request gets an id (``X-Request-Id``, bound into the log context) and is counted
    and timed in the metrics under its route template; one that succeeded on a route naming a VM
    counts as use of that VM (its idleTimeoutS starts over).

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
                    method=scope["method"] if scope["method"] in HTTP_METHODS else "other",
                    route=template,
                    status=str(status),
                ).inc()
                ctl.metrics.http_latency.labels(route=template).observe(
                    time.perf_counter() - started
                )
                vm_id = scope.get("path_params", {}).get("vm_id")
                if isinstance(vm_id, str) and status < 400:
                    ctl.lifetimes.touch(vm_id)
            structlog.contextvars.unbind_contextvars("request_id")


def create_app(
    settings: Settings,
    *,
    backend: VmBackend | None = None,
    images: ImageSource | None = None,
    quotas: Quotas | None = None,
    destroy_on_exit: bool = False,
    monitor_interval_s: float = 1.0,
    agent_bundle: AgentBundle | None = None,
) -> FastAPI:
    """Build the controller app: its lifespan enters the composition root (``open_hearth``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_hearth(
            settings,
            backend=backend,
            images=images,
            quotas=quotas,
            destroy_on_exit=destroy_on_exit,
            monitor_interval_s=monitor_interval_s,
            agent_bundle=agent_bundle,
        ) as hearth:
            app.state.controller = hearth.control
            yield

    app = FastAPI(
        title="Hearth",
        version=__version__,
        description="Isolated microVMs for AI coding CLIs. Every route but /health needs "
        '`Authorization: Bearer <key>`. Errors are `{"error": {"code", "message"}}`.',
        lifespan=lifespan,
    )
    install_error_handlers(app)

    # Starlette runs the middleware added last first: every request gets its id, then its key
    # and body size are checked, then its path and query are refused if they hold a NUL, before
    # any route reads the body.
    app.add_middleware(RefuseNul)
    app.add_middleware(
        KeyGuard,
        max_body_bytes=settings.max_body_bytes,
        uploads=files.UPLOAD_PATH,
        max_upload_bytes=settings.files_max_bytes,
    )
    app.add_middleware(ObserveRequests)
    app.include_router(system.router)
    app.include_router(vms.router)
    app.include_router(execs.router)
    app.include_router(files.router)
    app.include_router(run_routes.router)
    app.include_router(network.router)
    app.include_router(keys.router)
    app.include_router(auth_routes.router)
    app.include_router(view.router)
    app.include_router(terminal_routes.router)
    app.include_router(events.router)
    app.include_router(agent_routes.router)
    app.include_router(credential_routes.router)
    app.include_router(workspace_routes.router)
    # noVNC's files, with the view's protective headers; the view link says how to install them.
    app.mount("/novnc", view.novnc_files(), name="novnc")
    # The terminal page's files; xterm.js appears once installed (the page says how until then).
    app.mount("/static/terminal", StaticFiles(directory=PAGE_DIR), name="terminal-page")
    xterm = StaticFiles(directory=xterm_dir(settings.cache_dir), check_dir=False)
    app.mount("/xterm", xterm, name="xterm")
    return app

"""The agent's endpoints: the route table, one handler per endpoint, and dispatch."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace

from hearth_agent import __version__
from hearth_agent.browser import open_url
from hearth_agent.claim import AuthGate, parse_claim, parse_clock, set_system_clock
from hearth_agent.entropy import random_sample
from hearth_agent.errors import (
    AgentError,
    CorruptDocument,
    InvalidDocument,
    InvalidInput,
    MalformedJson,
    MethodNotAllowed,
    NotFound,
    StorageError,
    UnknownProvider,
)
from hearth_agent.exec_records import ExecRecords
from hearth_agent.exec_routes import ExecRoutes
from hearth_agent.execs import ExecRegistry
from hearth_agent.file_routes import FileRoutes
from hearth_agent.files import WorkspaceFiles
from hearth_agent.jsontext import JsonTextError, decode_json
from hearth_agent.log import JsonLogger
from hearth_agent.login import LoginRegistry, LoginRunnerFactory, LoginStatus, LoginView
from hearth_agent.login_dirs import owned_work_root
from hearth_agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hearth_agent.metrics import AgentMetrics, WriteOutcome
from hearth_agent.oidc import OidcLoginRunner
from hearth_agent.oidc_refresh import OidcRefresher
from hearth_agent.probe import parse_probe, probe_tcp
from hearth_agent.providers import SUPPORTED_PROVIDERS, CredentialFormat, get_provider
from hearth_agent.routing import (
    UNMATCHED_ROUTE,
    Request,
    Response,
    Route,
    error_response,
    json_response,
    query_flag,
    read_json,
    response_for,
)
from hearth_agent.storage import CredentialStore, WriteResult
from hearth_agent.update_routes import UpdateRoutes
from hearth_agent.updater import AgentUpdater
from hearth_agent.vendor import VENDOR_LOGINS, VendorLoginRunner, cli_status
from hearth_agent.vnc import provision_vnc_password
from hearth_agent.volume import VolumeRoutes
from hearth_agent.workspace import Workspace

MAX_LOGIN_WAIT_S = 30.0  # the longest a GET /login/{id}?wait= holds its request


def provider_field(body: Mapping[str, object]) -> str:
    """The ``provider`` field a request body must carry, as a string."""
    name = body.get("provider")
    if name is None:
        raise InvalidInput("field 'provider' is required")
    if not isinstance(name, str):
        raise InvalidInput("field 'provider' must be a string")
    return name


class AgentApp:
    """Dispatches requests to endpoints and turns every outcome into a Response."""

    def __init__(
        self,
        *,
        store: CredentialStore,
        gate: AuthGate,
        metrics: AgentMetrics,
        logger: JsonLogger,
        logins: LoginRegistry | None = None,
        login_runners: Mapping[str, LoginRunnerFactory] | None = None,
        execs: ExecRegistry | None = None,
        files: WorkspaceFiles | None = None,
        updater: AgentUpdater | None = None,
        refresher: OidcRefresher | None = None,
        set_clock: Callable[[float], bool] | None = set_system_clock,
    ) -> None:
        self._store = store
        self._set_clock = set_clock  # None: an agent outside a VM leaves the host's clock
        self._gate = gate
        self._metrics = metrics
        self._logger = logger
        if logins is None:
            logins = LoginRegistry(
                logger=logger, metrics=metrics, open_url=lambda url: open_url(url, logger=logger)
            )
        if login_runners is None:
            login_runners = default_login_runners(logger)
        self._logins = logins
        self._login_runners = login_runners
        if execs is None:
            execs = ExecRegistry(workspace=store.workspace, home=store.home, logger=logger)
        self._execs = execs
        self._volumes = VolumeRoutes(workspace=execs.workspace, logger=logger)
        self._updater = updater
        # Started by the agent's main (tests drive check_once themselves).
        self.refresher = refresher or OidcRefresher(store=store, logger=logger)
        if files is None:
            # The files API works in the directory commands run in.
            files = WorkspaceFiles(Workspace(execs.workspace), logger=logger)
        # Literal routes first: /credentials/write must win over /credentials/{provider},
        # /login/start over /login/{login_id}.
        self._routes = tuple(
            (route, route.pattern)
            for route in (
                Route("/health", {"GET": self._health}, public=True),
                Route("/init", {"POST": self._init}, public=True),
                Route("/version", {"GET": self._version}),
                Route("/metrics", {"GET": self._metrics_text}),
                Route("/probe/tcp", {"POST": self._probe_tcp}),
                Route("/clock", {"POST": self._clock}),
                Route(
                    "/random", {"GET": lambda request, params: json_response(200, random_sample())}
                ),
                Route("/admin/restart", {"POST": self._restart}),
                Route("/credentials/write", {"POST": self._write_compat}),
                *self.refresher.routes(),
                Route("/credentials/{provider}/status", {"GET": self._credentials_status}),
                Route(
                    "/credentials/{provider}",
                    {
                        "GET": self._get_credentials,
                        "PUT": self._put_credentials,
                        "DELETE": self._delete_credentials,
                    },
                ),
                Route("/login/start", {"POST": self._start_login}),
                Route("/login/{login_id}", {"GET": self._get_login, "DELETE": self._cancel_login}),
                *ExecRoutes(execs=execs).routes(),
                *FileRoutes(files=files).routes(),
                *UpdateRoutes(updater=updater, logger=logger).routes(),
                *self._volumes.routes(),
            )
        )

    @property
    def metrics(self) -> AgentMetrics:
        """The counters this app updates."""
        return self._metrics

    def close(self) -> None:
        """Stop refreshing, cancel every running login and kill every running exec's process
        group."""
        self.refresher.stop()
        self._logins.close()
        self._execs.close()

    def dispatch(self, request: Request) -> tuple[str, Response]:
        """Route and run a request; return the route template (for metrics) and the response.

        Never raises: AgentErrors become their HTTP error, anything else a generic 500 whose
        detail goes to the log under a request id.
        """
        template = UNMATCHED_ROUTE
        try:
            route, params = self._match(request.path)
            template = route.template
            handler = route.handlers.get(request.method)
            if handler is None:
                raise MethodNotAllowed(
                    f"{request.method} is not allowed on {route.template}", allow=route.allow
                )
            if not route.public:
                self._gate.authorize(request.authorization)
            return template, handler(request, params)
        except AgentError as error:
            return template, response_for(error)
        except Exception as exc:
            request_id = uuid.uuid4().hex[:12]
            self._logger.error(
                "internal_error",
                request_id=request_id,
                route=template,
                error_type=type(exc).__name__,
                frames=[
                    f"{f.filename}:{f.lineno} {f.name}"
                    for f in traceback.extract_tb(exc.__traceback__)
                ],
            )
            return template, error_response(
                500, "internal", f"internal error (request id {request_id})"
            )

    def _match(self, path: str) -> tuple[Route, dict[str, str]]:
        for route, pattern in self._routes:
            matched = pattern.fullmatch(path)
            if matched is not None:
                return route, matched.groupdict()
        raise NotFound("no such endpoint")

    def _health(self, request: Request, params: Mapping[str, str]) -> Response:
        return json_response(
            200,
            {
                "status": "ok",
                "version": __version__,
                "uptime_s": round(self._metrics.uptime(), 3),
                "claimed": self._gate.claimed,
                "auth": self._gate.mode.value,
                # The guest's wall clock, so the controller can check /init set it after a restore.
                "time": time.time(),
            },
        )

    def _version(self, request: Request, params: Mapping[str, str]) -> Response:
        return json_response(
            200,
            {
                "version": __version__,
                "python": platform.python_version(),
                "providers": list(SUPPORTED_PROVIDERS),
                "updates": self._updater is not None,
                "update": None if self._updater is None else self._updater.last_result(),
            },
        )

    def _metrics_text(self, request: Request, params: Mapping[str, str]) -> Response:
        return Response(
            status=200,
            body=self._metrics.render().encode("utf-8"),
            content_type=METRICS_CONTENT_TYPE,
        )

    def _probe_tcp(self, request: Request, params: Mapping[str, str]) -> Response:
        target = parse_probe(read_json(request))
        result = probe_tcp(target)
        self._metrics.observe_probe(result.outcome)
        self._logger.info(
            "tcp_probe",
            host=target.host,
            port=target.port,
            result=result.outcome.value,
            elapsed_ms=result.elapsed_ms,
        )
        return json_response(
            200,
            {
                "host": target.host,
                "port": target.port,
                "connected": result.connected,
                "error": result.error,
                "elapsed_ms": result.elapsed_ms,
            },
        )

    def _clock(self, request: Request, params: Mapping[str, str]) -> Response:
        """Set the guest's clock to the host's (after a wake from hibernation, whose guest
        woke with the time it was saved at); answers how far off it was."""
        epoch = parse_clock(read_json(request))
        before = time.time()
        clock_set = self._set_clock(epoch) if self._set_clock is not None else False
        self._logger.info("clock_set", clock_set=clock_set, offset_s=round(epoch - before, 3))
        return json_response(200, {"clockSet": clock_set, "offsetS": round(epoch - before, 3)})

    def _restart(self, request: Request, params: Mapping[str, str]) -> Response:
        self._logger.info("restart_requested")
        return replace(json_response(202, {"restarting": True}), exit_after=True)

    def _init(self, request: Request, params: Mapping[str, str]) -> Response:
        self._gate.ensure_claimable()
        claim = parse_claim(read_json(request))
        result = self._gate.claim(claim)
        self._volumes.survey()
        answer = {"claimed": True, "version": __version__, **dataclasses.asdict(result)}
        answer["vnc"] = provision_vnc_password(claim.token)  # Browser VMs only
        return json_response(200, answer)

    def _get_credentials(self, request: Request, params: Mapping[str, str]) -> Response:
        provider = get_provider(params["provider"])
        with_content = query_flag(request, "content")
        stored = self._store.read(provider)
        if stored is None:
            if with_content:
                raise NotFound(f"no credentials stored for provider '{provider.name}'")
            return json_response(
                200,
                {
                    "provider": provider.name,
                    "present": False,
                    "sha256": None,
                    "bytes": None,
                    "mtime": None,
                    "mode": None,
                    "expires_at": None,
                },
            )
        document: object = None
        try:
            document = decode_json(stored.content)
        except JsonTextError as exc:
            if with_content:
                raise CorruptDocument(
                    f"stored credentials for provider '{provider.name}' are not valid JSON"
                ) from exc
        payload: dict[str, object] = {
            "provider": provider.name,
            "present": True,
            "sha256": stored.sha256,
            "bytes": len(stored.content),
            "mtime": stored.mtime,
            "mode": f"{stored.mode:04o}",
            "expires_at": provider.expires_at(document),
        }
        if with_content:
            payload["document"] = document
            # Its bytes as they are (the CLI's own layout), so a copy kept elsewhere has this
            # file's sha256.
            payload["content"] = stored.content.decode("utf-8")
        return json_response(200, payload)

    def _credentials_status(self, request: Request, params: Mapping[str, str]) -> Response:
        """What the provider's own CLI says about the stored credentials (offline)."""
        provider = get_provider(params["provider"])
        report = cli_status(provider, home=self._store.home)
        self._logger.info(
            "credentials_status",
            provider=provider.name,
            command=report.command,
            exit_code=report.exit_code,
            logged_in=report.logged_in,
        )
        return json_response(200, report.as_json())

    def _put_credentials(self, request: Request, params: Mapping[str, str]) -> Response:
        provider = get_provider(params["provider"])

        def document_bytes() -> bytes:
            body = request.read_body()
            if not body:
                raise MalformedJson("request body is empty; a JSON document is required")
            try:
                provider.validate(decode_json(body))
            except JsonTextError as exc:
                raise MalformedJson(f"request body is not valid JSON: {exc}") from exc
            return body

        return self._write(provider, document_bytes)

    def _write_compat(self, request: Request, params: Mapping[str, str]) -> Response:
        envelope = read_json(request)
        if not isinstance(envelope, dict):
            raise InvalidInput("body must be a JSON object with 'provider' and 'credentials'")
        if "path" in envelope:
            raise InvalidInput("field 'path' is not accepted: paths are decided by the agent")
        provider = get_provider(provider_field(envelope))

        def document_bytes() -> bytes:
            if "credentials" not in envelope:
                raise InvalidDocument("field 'credentials' is required")
            credentials = provider.validate(envelope["credentials"])
            return (json.dumps(credentials, indent=2, sort_keys=False) + "\n").encode("utf-8")

        return self._write(provider, document_bytes)

    def _write(self, provider: CredentialFormat, document_bytes: Callable[[], bytes]) -> Response:
        """Validate, store and count one write; the outcome label follows where it failed."""
        try:
            data = document_bytes()
        except AgentError:
            self._metrics.observe_write(provider=provider.name, outcome=WriteOutcome.INVALID)
            raise
        try:
            result: WriteResult = self._store.write(provider, data)
        except StorageError:
            self._metrics.observe_write(provider=provider.name, outcome=WriteOutcome.ERROR)
            raise
        self._metrics.observe_write(provider=provider.name, outcome=WriteOutcome.OK)
        self._logger.info(
            "credentials_written", provider=provider.name, bytes=result.size, sha256=result.sha256
        )
        return json_response(
            200,
            {
                "provider": provider.name,
                "sha256": result.sha256,
                "bytes": result.size,
                "path": result.display_path,
            },
        )

    def _delete_credentials(self, request: Request, params: Mapping[str, str]) -> Response:
        provider = get_provider(params["provider"])
        deleted = self._store.delete(provider)
        self._logger.info("credentials_deleted", provider=provider.name, deleted=deleted)
        return json_response(200, {"provider": provider.name, "deleted": deleted})

    def _start_login(self, request: Request, params: Mapping[str, str]) -> Response:
        body = read_json(request)
        if not isinstance(body, dict):
            raise InvalidInput("/login/start body must be a JSON object")
        name = provider_field(body)
        runner_for = self._login_runners.get(name)
        if runner_for is None:
            get_provider(name)  # a name the agent has never heard of: 404 listing the known ones
            raise UnknownProvider(
                f"provider {name!r} has no login runner yet; "
                f"login supports: {', '.join(self._login_runners)}"
            )
        view = self._logins.start(name, runner_for(body)).view()
        return json_response(
            201,
            {
                **_login_payload(view),
                "authorize_url": view.authorize_url,
                "opened_in_browser": view.opened_in_browser,
            },
        )

    def _get_login(self, request: Request, params: Mapping[str, str]) -> Response:
        session = self._logins.get(params["login_id"])
        with_content = query_flag(request, "content")
        wait_s = login_wait(request)
        if wait_s > 0:
            # A long poll: answered as soon as the login ends (the capture reaches the
            # controller at once), or when ``wait`` seconds pass.
            session.wait_until_ended(wait_s)
        view = session.view()
        payload = _login_payload(view)
        if wait_s > 0:
            payload["waited"] = True  # so a controller knows this agent long-polls
        if with_content:
            # Captured is final and set together with the document, so this pair is consistent.
            document = session.document if view.status is LoginStatus.CAPTURED else None
            payload["document"] = None if document is None else decode_json(document)
        return json_response(200, payload)

    def _cancel_login(self, request: Request, params: Mapping[str, str]) -> Response:
        session = self._logins.cancel(params["login_id"])
        return json_response(200, _login_payload(session.view()))


def default_login_runners(
    logger: JsonLogger, *, records: ExecRecords | None = None
) -> dict[str, LoginRunnerFactory]:
    """The login runners of a real agent: the generic OIDC one and one per vendor CLI (whose
    CLI is recorded in ``records`` while it runs, as an exec is, and whose folder is in this
    agent's work root: what dead agents' logins left there is removed first)."""
    work_root = owned_work_root(logger)
    runners: dict[str, LoginRunnerFactory] = {
        "oidc": lambda body: OidcLoginRunner.from_request(body, logger=logger)
    }
    for provider in VENDOR_LOGINS:
        runners[provider] = lambda body: VendorLoginRunner.from_request(
            body, work_root=work_root, logger=logger, records=records
        )
    return runners


def login_wait(request: Request) -> float:
    """``?wait=S``: seconds a ``GET /login/{id}`` may wait for the login to end (0 to
    MAX_LOGIN_WAIT_S; absent: 0, answer at once)."""
    values = request.query.get("wait")
    if not values:
        return 0.0
    try:
        wait_s = float(values[-1])
    except ValueError:
        wait_s = -1.0
    if not 0 <= wait_s <= MAX_LOGIN_WAIT_S:  # also refuses nan
        raise InvalidInput(
            f"query parameter 'wait' must be a number of seconds from 0 to {MAX_LOGIN_WAIT_S:g}"
        )
    return wait_s


def _login_payload(view: LoginView) -> dict[str, object]:
    """What every login endpoint says about a session (never its tokens)."""
    return {
        "login_id": view.login_id,
        "provider": view.provider,
        "status": view.status.value,
        "error": view.error,
    }

"""The ``oidc`` document kept fresh in the CLI VM: refreshed before its access token expires.

The VM that holds a document owns its refresh (the controller never refreshes a delivered
document; it pulls the refreshed one back). Every ``interval_s`` the refresher reads the stored
``oidc`` document; within ``margin_s`` of its expiry it asks the issuer's token endpoint for new
tokens (RFC 6749 section 6, as the public client the login used) through the VM's egress proxy,
and writes the new document atomically, 0600, only if the stored one is still the one it
refreshed (a delivery that replaced it meanwhile wins).

A refusal with ``invalid_grant`` means the grant is gone (revoked, expired, or its refresh token
reused): no retry can help, so that document is not tried again and the state says ``refused``
until another document arrives; the controller reads that state, marks the credential
``needs_login`` and tells ``credential.expired``. Anything else (issuer unreachable, a 5xx) is
``failing`` and tried again; failing rounds in a row space out (``RetryDelay``: ``interval_s``
doubling up to ``max_backoff_s``, 5 min), and any other outcome brings back ``interval_s``.

The refresh spends the old refresh token (the issuer rotates it), so once the issuer has answered,
the new document is the grant's only live copy. If it cannot be written (disk full, EIO), the
store holds it in memory and serves it to the agent's credential reads (the controller's
pull-back takes it from there), the state is ``failing`` with the store's error code
(``storage_error``, ``disk_full``), and the next rounds write that document: they never refresh
with the spent token. Held only in memory, it is lost if the agent restarts before it is written.

    GET /credentials/oidc/refresh → the state: {"state", "sha256", "error", "at", "refreshes",
                                     "proxy", "margin_s"} (no token, ever)
    PUT /credentials/oidc/refresh {"proxy"?: "http://IPv4:port" | null, "margin_s"?: seconds}
                                  → the state; the controller sets the VM's egress proxy here
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hearth_agent.errors import AgentError, InvalidInput, StorageError
from hearth_agent.install_root import now_iso
from hearth_agent.jsontext import JsonTextError, decode_json
from hearth_agent.log import JsonLogger
from hearth_agent.login import proxy_field, seconds_field
from hearth_agent.oidc_protocol import (
    DiscoveryFailed,
    TokenExchangeFailed,
    discover,
    refresh_grant,
    refreshed_document,
)
from hearth_agent.oidc_request import PROVIDER
from hearth_agent.providers import get_provider
from hearth_agent.routing import Request, Response, Route, json_response, read_json
from hearth_agent.storage import (
    CredentialStore,
    StoredFile,
    WriteResult,
    atomic_write,
    ensure_private_dirs,
    read_small_file,
)

DEFAULT_MARGIN_S = 60.0
MAX_MARGIN_S = 86_400.0
DEFAULT_INTERVAL_S = 2.0
MAX_BACKOFF_S = 300.0  # the longest wait between two failing rounds
MIN_GAP_S = 30.0  # the least time between two refreshes
# Where PUT's settings are kept, so that a restarted agent (respawned, updated) goes on
# refreshing through the same proxy.
CONFIG_FILE = ".config/hearth/oidc-refresh.json"


class RefreshState:
    """What the refresher last did: ``idle`` (nothing to refresh yet), ``refreshed``,
    ``failing`` (tried again next round) or ``refused`` (the document's grant is gone)."""

    IDLE = "idle"
    REFRESHED = "refreshed"
    FAILING = "failing"
    REFUSED = "refused"


@dataclass(frozen=True)
class RetryDelay:
    """The wait before the next round: ``interval_s``, or after ``failures`` failing rounds in a
    row, ``interval_s`` doubled once per failure after the first, at most ``max_s``."""

    interval_s: float = DEFAULT_INTERVAL_S
    max_s: float = MAX_BACKOFF_S

    def after(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failing rounds in a row (0: none)."""
        doublings = min(max(failures - 1, 0), 32)  # 2**32 intervals is past any cap
        return max(self.interval_s, min(self.interval_s * 2.0**doublings, self.max_s))


@dataclass
class _Status:
    state: str = RefreshState.IDLE
    sha256: str | None = None  # the document the state is about
    error: str | None = None  # an OAuth error code or a short reason; never a token
    at: str | None = None
    refreshes: int = 0


@dataclass
class _Config:
    proxy: str | None = None
    margin_s: float = DEFAULT_MARGIN_S
    status: _Status = field(default_factory=_Status)


class OidcRefresher:
    """Refreshes the stored ``oidc`` document before it expires, on a thread of its own."""

    def __init__(
        self,
        *,
        store: CredentialStore,
        logger: JsonLogger,
        interval_s: float = DEFAULT_INTERVAL_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._logger = logger
        self._delay = RetryDelay(interval_s=interval_s, max_s=max_backoff_s)
        self._failures = 0  # failing rounds in a row (guarded by _lock)
        self._clock = clock
        self._refreshed_at: float | None = None  # the clock's time of the last refresh
        self._format = get_provider(PROVIDER)
        self._round = threading.Lock()  # one refresh at a time
        self._lock = threading.Lock()  # guards _config: never held over the network
        self._config = self._load()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def routes(self) -> tuple[Route, ...]:
        """The routes to mount in the app's table, before ``/credentials/{provider}``."""
        return (
            Route("/credentials/oidc/refresh", {"GET": self._get, "PUT": self._put}),
        )  # fmt: skip

    def start(self) -> None:
        """Check every ``interval_s`` (backing off while rounds fail) on a daemon thread
        until ``stop``."""
        self._thread = threading.Thread(target=self._loop, name="oidc-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (a refresh in flight finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def status(self) -> dict[str, object]:
        """The state, as ``GET`` answers it."""
        with self._lock:
            config = self._config
            return {
                "state": config.status.state,
                "sha256": config.status.sha256,
                "error": config.status.error,
                "at": config.status.at,
                "refreshes": config.status.refreshes,
                "proxy": config.proxy,
                "margin_s": config.margin_s,
            }

    def check_once(self) -> str:
        """Refresh the stored document if it is due; the state after."""
        with self._round:
            self._check()
        with self._lock:
            return self._config.status.state

    # ---- internals ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self._next_delay()):
            try:
                self.check_once()
            except Exception as exc:  # the loop must outlive any one round
                self._logger.error("oidc_refresh_crashed", error_type=type(exc).__name__)
                with self._lock:
                    self._failures += 1

    def _next_delay(self) -> float:
        with self._lock:
            return self._delay.after(self._failures)

    def _check(self) -> None:
        with self._lock:
            status, margin_s, proxy = self._config.status, self._config.margin_s, self._config.proxy
            refused_sha = status.sha256 if status.state == RefreshState.REFUSED else None
        try:
            stored = self._store.read(self._format)
        except StorageError as exc:
            self._set(RefreshState.FAILING, status.sha256, exc.code)
            return
        if stored is None:
            with self._lock:
                self._config.status = _Status(refreshes=status.refreshes)
                self._failures = 0
            return
        if refused_sha == stored.sha256:
            return  # that grant is gone; only a new document can help
        if not stored.saved:
            self._save_held(stored)  # a refresh's document the disk refused: write it first
            return
        try:
            document = self._format.validate(decode_json(stored.content))
        except (JsonTextError, AgentError):
            self._set(RefreshState.FAILING, stored.sha256, "invalid_document")
            return
        expires_at = self._format.expires_at(document)
        now = self._clock()
        if expires_at is not None and expires_at - now > margin_s:
            return
        if self._refreshed_at is not None and 0 <= now - self._refreshed_at < MIN_GAP_S:
            return  # a lifetime shorter than the margin must not make a refresh every check
        client_id = document.get("client_id")
        if not isinstance(client_id, str):
            self._set(RefreshState.FAILING, stored.sha256, "no_client_id")
            return
        try:
            metadata = discover(str(document["issuer"]), proxy=proxy)
            tokens = refresh_grant(
                metadata,
                client_id=client_id,
                refresh_token=str(document["refresh_token"]),
                proxy=proxy,
            )
            fresh = refreshed_document(document, tokens, now=self._clock())
        except TokenExchangeFailed as exc:
            refused = exc.oauth_error == "invalid_grant"
            state = RefreshState.REFUSED if refused else RefreshState.FAILING
            self._set(state, stored.sha256, exc.oauth_error or exc.code)
            log = self._logger.warning if refused else self._logger.error
            log("oidc_refresh_" + state, error=exc.oauth_error or exc.code, message=exc.message)
            return
        except DiscoveryFailed as exc:
            self._set(RefreshState.FAILING, stored.sha256, exc.code)
            self._logger.error("oidc_refresh_failing", error=exc.code, message=exc.message)
            return
        try:
            written = self._store.replace(self._format, fresh, sha256=stored.sha256)
        except StorageError as exc:
            # The old refresh token is spent: the store holds the new document (see replace).
            self._refreshed_at = now
            self._unsaved(hashlib.sha256(fresh).hexdigest(), exc)
            return
        if written is None:
            self._logger.info("oidc_refresh_superseded")  # a delivery replaced the document
            return
        self._refreshed_at = now
        self._saved(written, fresh)

    def _save_held(self, stored: StoredFile) -> None:
        """Write the refreshed document the store holds since a write failed."""
        try:
            written = self._store.save_held(self._format)
        except StorageError as exc:
            self._unsaved(stored.sha256, exc)
            return
        if written is None:
            self._logger.info("oidc_refresh_superseded")  # a delivery replaced the document
            return
        self._saved(written, stored.content)

    def _saved(self, written: WriteResult, fresh: bytes) -> None:
        self._set(RefreshState.REFRESHED, written.sha256, None, refreshed=True)
        self._logger.info(
            "oidc_refreshed", sha256=written.sha256, expires_at=self._format.expires_at(
                decode_json(fresh)
            ),
        )  # fmt: skip

    def _unsaved(self, sha256: str, exc: StorageError) -> None:
        self._set(RefreshState.FAILING, sha256, exc.code)
        # The store's message names the file and the system's reason, never its content.
        self._logger.error(
            "oidc_refresh_unsaved", sha256=sha256, error=exc.code, message=exc.message
        )

    def _load(self) -> _Config:
        try:
            saved = decode_json(read_small_file(self._store.home / CONFIG_FILE))
            proxy = proxy_field(saved) if isinstance(saved, dict) else None
            margin_s = _margin(saved) if isinstance(saved, dict) else DEFAULT_MARGIN_S
        except (OSError, JsonTextError, AgentError):
            return _Config()  # none saved yet (or unreadable): direct, the default margin
        return _Config(proxy=proxy, margin_s=margin_s)

    def _set(
        self, state: str, sha256: str | None, error: str | None, *, refreshed: bool = False
    ) -> None:
        with self._lock:
            status = self._config.status
            status.state, status.sha256, status.error, status.at = state, sha256, error, now_iso()
            status.refreshes += refreshed
            self._failures = self._failures + 1 if state == RefreshState.FAILING else 0

    def _get(self, request: Request, params: Mapping[str, str]) -> Response:
        return json_response(200, self.status())

    def _put(self, request: Request, params: Mapping[str, str]) -> Response:
        body = read_json(request)
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        proxy, margin_s = proxy_field(body), _margin(body)
        with self._lock:
            ensure_private_dirs(self._store.home, str(Path(CONFIG_FILE).parent))
            saved = {"proxy": proxy, "margin_s": margin_s}
            atomic_write(self._store.home / CONFIG_FILE, json.dumps(saved).encode("utf-8"))
            self._config.proxy, self._config.margin_s = proxy, margin_s
        self._logger.info("oidc_refresh_configured", proxy=proxy is not None, margin_s=margin_s)
        return json_response(200, self.status())


def _margin(body: Mapping[str, object]) -> float:
    return seconds_field(body, "margin_s", default=DEFAULT_MARGIN_S, low=0, high=MAX_MARGIN_S)

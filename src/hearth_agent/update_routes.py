"""The live-update endpoint: the controller pushes its own build of the agent into a running VM.

    POST /agent/update   body: gzip'd tar of hearth_agent/*.py; headers as in ``update``
                         → 202 {"updating": true, "from", "to", "release"}, then the agent exits
                         409 updates_disabled | update_in_progress | already_current
                         413 bundle_too_large; 422 digest_mismatch | invalid_bundle

On 202 init restarts the agent on the new release; its guard returns to the previous one if the
new one does not answer /health healthy within the deadline. ``GET /version`` reports whether
updates are enabled and the last update's result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from hearth_agent.errors import AgentError, BundleTooLarge, FileTooLarge, UpdatesDisabled
from hearth_agent.log import JsonLogger
from hearth_agent.routing import Request, Response, Route, json_response
from hearth_agent.update import MAX_BUNDLE_BYTES, UpdateRequest
from hearth_agent.updater import AgentUpdater, UpdateStarted


class UpdateRoutes:
    """The update endpoint over one updater (None: the agent runs without ``--updates``)."""

    def __init__(self, *, updater: AgentUpdater | None, logger: JsonLogger) -> None:
        self._updater = updater
        self._logger = logger

    def routes(self) -> tuple[Route, ...]:
        """The routes to mount in the app's table (all need the bearer token)."""
        return (Route("/agent/update", {"POST": self._update}),)

    def _update(self, request: Request, params: Mapping[str, str]) -> Response:
        try:
            started = self._apply(request)
        except AgentError as error:
            self._logger.warning("update_refused", code=error.code, message=error.message)
            raise
        self._logger.info(
            "update_handover",
            from_version=started.from_version,
            to_version=started.to_version,
            release=started.release,
        )
        return replace(json_response(202, started.as_json()), exit_after=True)

    def _apply(self, request: Request) -> UpdateStarted:
        if self._updater is None:
            raise UpdatesDisabled(
                "this agent runs without a usable --updates DIR, so it cannot be updated live"
            )
        self._updater.ensure_idle()
        update = UpdateRequest.from_headers(request.header)
        try:
            body = request.open_body(MAX_BUNDLE_BYTES).read()
        except FileTooLarge as exc:
            raise BundleTooLarge(
                f"an update bundle is at most {MAX_BUNDLE_BYTES} bytes (compressed)"
            ) from exc
        return self._updater.apply(update, body)

"""Ended logins forgotten: the login sessions that ended (completed, failed, timed out,
cancelled) over ``HEARTH_AUTH_SESSION_RETENTION_S`` ago are deleted, hourly; never a session
that has not ended, nor one whose Browser VM still holds resources (the next start destroys
that VM by its session)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hearth.config import Settings
from hearth.logging import get_logger
from hearth.periodic import every
from hearth.store import Store

_log = get_logger("auth.retention")
PRUNE_INTERVAL_S = 3600.0


class EndedLogins:
    """Forgets the store's login sessions that ended longer ago than the settings keep them."""

    def __init__(self, *, store: Store, settings: Settings) -> None:
        self.store = store
        self._keep = timedelta(seconds=settings.auth_session_retention_s)

    async def prune_once(self) -> int:
        """Delete the sessions that ended before the retention; how many went."""
        before = datetime.now(UTC) - self._keep
        pruned = await self.store.auth_sessions.prune_ended(before)
        if pruned:
            _log.info("auth_sessions_pruned", count=pruned, before=before.isoformat())
        return pruned

    async def run(self) -> None:
        """``prune_once`` now and every ``PRUNE_INTERVAL_S`` (cancel to stop)."""
        await every(PRUNE_INTERVAL_S, self.prune_once, what="auth session pruning")

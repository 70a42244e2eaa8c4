"""The update guard: ``python3 -m hearth_agent.update_guard``, the watcher of one live update.

An agent about to swap in a new release starts the guard detached, on the code of the release it
runs itself (the one a failure returns to, so a broken new build cannot break the way back), and
waits until the guard holds ``update.lock``. The guard asks the agent's ``/health`` until an agent
that started after it answers ``status: ok`` with the new version: it then records success and
removes every release but the new one and the previous one. If the deadline passes first, it
points ``DIR/hearth_agent`` back at the previous release, stops every agent of this root that
started before that moment (init starts the previous release half a second later), and records
the failure with the last answer it got. Either way it releases the lock and exits.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hearth_agent.install_root import InstallRoot, now_iso
from hearth_agent.log import JsonLogger
from hearth_agent.processes import (
    agents_of,
    is_agent,
    started_at,
    stop_processes,
    ticks_since_boot,
)

POLL_INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 2.0
# How long a stopped agent gets for SIGTERM before SIGKILL (it finishes requests in flight).
STOP_GRACE_S = 3.0
EXIT_OK = 0
EXIT_ROLLED_BACK = 1


@dataclass(frozen=True)
class GuardPlan:
    """What one guard watches: the root, the agent's address, the two releases, the deadline."""

    root: Path
    host: str
    port: int
    from_version: str
    to_version: str
    release: str  # the new release's directory name
    previous: str  # the release to return to
    deadline_s: float

    def argv(self) -> list[str]:
        """The guard's command-line options for this plan (``parse`` reads them back)."""
        return [
            "--root", str(self.root),
            "--host", self.host,
            "--port", str(self.port),
            "--from", self.from_version,
            "--to", self.to_version,
            "--release", self.release,
            "--previous", self.previous,
            "--deadline-s", f"{self.deadline_s:g}",
        ]  # fmt: skip

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> GuardPlan:
        """Read the options ``argv`` writes (argparse exits with code 2 on bad usage)."""
        parser = argparse.ArgumentParser(prog="python3 -m hearth_agent.update_guard")
        for option in ("--root", "--host", "--from", "--to", "--release", "--previous"):
            parser.add_argument(option, required=True)
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--deadline-s", type=float, required=True)
        args = parser.parse_args(argv)
        return cls(
            root=Path(args.root),
            host=args.host,
            port=args.port,
            from_version=getattr(args, "from"),
            to_version=args.to,
            release=args.release,
            previous=args.previous,
            deadline_s=args.deadline_s,
        )


def probe_health(plan: GuardPlan, *, started_after_s: float) -> str | None:
    """None when /health answers ``status: ok`` and the new version from an agent up for less
    than ``started_after_s`` (so not the agent that started the update); else what it said."""
    connection = http.client.HTTPConnection(plan.host, plan.port, timeout=PROBE_TIMEOUT_S)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        body = response.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        return f"no answer from /health ({_describe(exc)})"
    finally:
        connection.close()
    if response.status != 200:
        return f"/health answered HTTP {response.status}"
    try:
        health = json.loads(body)
    except ValueError:
        return "/health answered something other than JSON"
    if not isinstance(health, dict):
        return "/health answered something other than a JSON object"
    if health.get("status") != "ok":
        return f"/health says status {health.get('status')!r}"
    if health.get("version") != plan.to_version:
        return f"/health says version {health.get('version')!r}"
    uptime = health.get("uptime_s")
    if not isinstance(uptime, int | float) or uptime >= started_after_s:
        return "/health is answered by the agent that started the update"
    return None


def wait_until_healthy(plan: GuardPlan) -> str | None:
    """Probe until the new version is healthy (None) or the deadline passes (the last answer)."""
    started = time.monotonic()
    deadline = started + plan.deadline_s
    while True:
        problem = probe_health(plan, started_after_s=time.monotonic() - started)
        if problem is None:
            return None
        if time.monotonic() + POLL_INTERVAL_S >= deadline:
            return problem
        time.sleep(POLL_INTERVAL_S)


def roll_back(root: InstallRoot, plan: GuardPlan) -> list[int]:
    """Point the symlink back at the previous release and stop every agent of this root started
    before that moment; the PIDs stopped."""
    boundary = ticks_since_boot()
    root.point_to(root.release(plan.previous))
    os.sync()
    candidates = set(agents_of(root.path))
    recorded = root.read_pid()
    if recorded is not None and is_agent(recorded):
        candidates.add(recorded)
    # An agent started after the swap runs the previous release already: leave it be.
    before = []
    for pid in sorted(candidates):
        started = started_at(pid)
        if started is not None and started <= boundary:
            before.append(pid)
    return stop_processes(before, grace_s=STOP_GRACE_S)


def run(plan: GuardPlan, logger: JsonLogger) -> int:
    """Watch the update, roll it back if need be, record the outcome; the exit code."""
    root = InstallRoot(plan.root)
    pid = os.getpid()
    versions = {"from_version": plan.from_version, "to_version": plan.to_version}
    root.write_lock(
        {
            "pid": pid,
            "from": plan.from_version,
            "to": plan.to_version,
            "release": plan.release,
            "previous": plan.previous,
            "since": now_iso(),
        }
    )
    logger.info(
        "update_guard_started", pid=pid, release=plan.release, deadline_s=plan.deadline_s,
        **versions,
    )  # fmt: skip
    try:
        try:
            problem = wait_until_healthy(plan)
        except Exception as exc:  # whatever broke the watch, the safe way out is back
            problem = f"the guard could not watch /health: {type(exc).__name__}: {exc}"
        if problem is None:
            _prune(root, plan, logger)
            root.write_result(release=plan.release, ok=True, error=None, **versions)
            logger.info("update_succeeded", release=plan.release, **versions)
            return EXIT_OK
        reason = f"version {plan.to_version} not healthy within {plan.deadline_s:g} s: {problem}"
        logger.error("update_unhealthy", release=plan.release, reason=reason, **versions)
        try:
            stopped = roll_back(root, plan)
        except Exception as exc:
            reason += f"; rolling back failed: {type(exc).__name__}: {exc}"
            logger.error("update_rollback_failed", error_type=type(exc).__name__, **versions)
        else:
            logger.warning(
                "update_rolled_back", release=plan.previous, stopped_pids=stopped, **versions
            )
        root.write_result(release=plan.release, ok=False, error=reason, **versions)
        return EXIT_ROLLED_BACK
    finally:
        root.release_lock(pid)
        logger.info("update_guard_stopped", pid=pid)


def _prune(root: InstallRoot, plan: GuardPlan, logger: JsonLogger) -> None:
    try:
        removed = root.prune({plan.release, plan.previous})
    except OSError as exc:
        logger.warning("releases_not_pruned", reason=exc.strerror)
        return
    if removed:
        logger.info("releases_pruned", removed=removed)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m hearth_agent.update_guard``."""
    return run(GuardPlan.parse(argv), JsonLogger())


if __name__ == "__main__":
    sys.exit(main())

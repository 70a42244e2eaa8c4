"""The agent's side of a live update: check the bundle, stage it as a release beside the running
one, start the guard on the running release's code, then swap the symlink. The route answers 202
and the agent exits; init starts the new release, and the guard rolls it back if it is not healthy
in time (``update_guard``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import hearth_agent
from hearth_agent import __version__
from hearth_agent.errors import (
    AlreadyCurrent,
    ConfigError,
    DigestMismatch,
    UpdateFailed,
    UpdateInProgress,
)
from hearth_agent.install_root import InstallRoot, Release
from hearth_agent.log import JsonLogger
from hearth_agent.processes import GUARD_MODULE
from hearth_agent.update import UpdateRequest
from hearth_agent.update_bundle import read_bundle
from hearth_agent.update_guard import GuardPlan

# How long the guard may take to start and hold the lock (a cold python3 under emulation).
GUARD_START_DEADLINE_S = 20.0


@dataclass(frozen=True)
class UpdateStarted:
    """An update handed to its guard: the agent exits once this is answered."""

    from_version: str
    to_version: str
    release: str

    def as_json(self) -> dict[str, object]:
        """The 202 body of ``POST /agent/update``."""
        return {
            "updating": True,
            "from": self.from_version,
            "to": self.to_version,
            "release": self.release,
        }


def probe_host(listen_host: str) -> str:
    """Where the guard reaches an agent listening on ``listen_host`` (any address: loopback)."""
    if listen_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if listen_host == "::":
        return "::1"
    return listen_host


class AgentUpdater:
    """Applies pushed bundles to one install root; one update at a time."""

    def __init__(
        self,
        *,
        root: InstallRoot,
        host: str,
        port: int,
        logger: JsonLogger,
        version: str = __version__,
    ) -> None:
        self._root = root
        self._host = probe_host(host)
        self._port = port
        self._logger = logger
        self._version = version
        self._busy = threading.Lock()

    @classmethod
    def create(cls, *, root_dir: Path, host: str, port: int, logger: JsonLogger) -> AgentUpdater:
        """Check that updates can work from ``root_dir``, record this agent's PID there, and
        settle the result of an update whose guard vanished; ConfigError says why not."""
        if port == 0:
            raise ConfigError("--updates needs a fixed --listen port: the guard asks it")
        root = InstallRoot(root_dir.absolute())
        if not root.runs(Path(hearth_agent.__file__).parent):
            raise ConfigError(
                f"--updates {root_dir}: this agent does not run from {root.package_link} "
                f"(put {root_dir} on PYTHONPATH)"
            )
        try:
            root.write_pid(os.getpid())
        except OSError as exc:
            raise ConfigError(f"--updates {root_dir}: cannot write its files ({exc})") from exc
        updater = cls(root=root, host=host, port=port, logger=logger)
        updater._settle_orphaned_result()
        return updater

    def last_result(self) -> dict[str, object] | None:
        """The last update's result (``ok`` None while its guard watches), for ``/version``."""
        return self._root.read_result()

    def ensure_idle(self) -> None:
        """Raise UpdateInProgress while an update is being applied or its guard still runs."""
        if self._busy.locked():
            raise UpdateInProgress("another update is being applied")
        self._check_no_guard()

    def apply(self, update: UpdateRequest, body: bytes) -> UpdateStarted:
        """Check ``body`` against ``update``, stage it, start its guard and swap it in."""
        digest = hashlib.sha256(body).hexdigest()
        self._logger.info(
            "update_received", to_version=update.version, bytes=len(body), sha256=digest
        )
        if digest != update.sha256:
            raise DigestMismatch(
                f"the body's sha256 is {digest}, the header states {update.sha256}"
            )
        files = read_bundle(body, version=update.version)
        if not self._busy.acquire(blocking=False):
            raise UpdateInProgress("another update is being applied")
        try:
            self._check_no_guard()
            return self._install(update, files)
        finally:
            self._busy.release()

    def _check_no_guard(self) -> None:
        lock = self._root.live_lock()
        if lock is not None:
            raise UpdateInProgress(
                f"the guard of the update to {lock.get('to')} still runs (pid {lock.get('pid')})"
            )

    def _install(self, update: UpdateRequest, files: dict[str, bytes]) -> UpdateStarted:
        current = self._root.current()
        if current is not None and current.name == update.release:
            raise AlreadyCurrent(f"release {update.release} is the one running")
        try:
            previous = self._root.adopt_base(self._version)
        except OSError as exc:
            raise UpdateFailed(f"cannot move the image's release aside: {exc}") from exc
        try:
            release = self._root.stage(update.release, files)
        except OSError as exc:
            raise UpdateFailed(f"cannot stage release {update.release}: {exc}") from exc
        self._logger.info("update_staged", release=release.name, files=len(files))
        plan = GuardPlan(
            root=self._root.path,
            host=self._host,
            port=self._port,
            from_version=self._version,
            to_version=update.version,
            release=release.name,
            previous=previous.name,
            deadline_s=update.deadline_s,
        )
        guard = self._start_guard(plan, previous, release)
        try:
            self._root.point_to(release)
            os.sync()
        except OSError as exc:
            self._abandon(plan, release, guard, f"cannot swap the symlink: {exc}")
            raise UpdateFailed(f"cannot swap to release {release.name}: {exc}") from exc
        self._logger.info(
            "update_swapped", release=release.name, previous=previous.name, guard_pid=guard.pid
        )
        return UpdateStarted(
            from_version=self._version, to_version=update.version, release=release.name
        )

    def _start_guard(
        self, plan: GuardPlan, previous: Release, release: Release
    ) -> subprocess.Popen[bytes]:
        """Record the update as pending, start the guard on the previous release's code, and
        wait until it holds the lock; on failure, undo the update (UpdateFailed)."""
        env = dict(os.environ, PYTHONPATH=str(previous.path), PYTHONDONTWRITEBYTECODE="1")
        python = [sys.executable or "python3", *(["-S"] if sys.flags.no_site else [])]
        try:
            self._record(plan, ok=None, error=None)
            guard = subprocess.Popen(
                [*python, "-m", GUARD_MODULE, *plan.argv()],
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # survives the agent's exit and its process group
            )
        except OSError as exc:
            self._abandon(plan, release, None, f"cannot start the guard: {exc}")
            raise UpdateFailed(f"cannot start the update guard: {exc}") from exc
        deadline = time.monotonic() + GUARD_START_DEADLINE_S
        while True:
            lock = self._root.live_lock()
            if lock is not None and lock.get("pid") == guard.pid:
                self._logger.info("update_guard_running", guard_pid=guard.pid)
                return guard
            if guard.poll() is not None or time.monotonic() > deadline:
                problem = (
                    f"the guard exited with status {guard.returncode}"
                    if guard.returncode is not None
                    else f"the guard did not start within {GUARD_START_DEADLINE_S:g} s"
                )
                self._abandon(plan, release, guard, problem)
                raise UpdateFailed(f"{problem}; nothing was swapped")
            time.sleep(0.02)

    def _abandon(
        self,
        plan: GuardPlan,
        release: Release,
        guard: subprocess.Popen[bytes] | None,
        problem: str,
    ) -> None:
        """Undo a half-started update: stop its guard, drop the staged release, record why."""
        self._logger.error("update_abandoned", release=release.name, reason=problem)
        if guard is not None:
            if guard.poll() is None:
                guard.kill()
            guard.wait()
            self._root.release_lock(guard.pid)
        self._root.discard(release)
        try:
            self._record(plan, ok=False, error=problem)
        except OSError as exc:
            self._logger.error("update_result_not_written", reason=exc.strerror)

    def _record(self, plan: GuardPlan, *, ok: bool | None, error: str | None) -> None:
        """Record ``plan``'s outcome (``ok`` None: pending, its guard watching)."""
        self._root.write_result(
            from_version=plan.from_version,
            to_version=plan.to_version,
            release=plan.release,
            ok=ok,
            error=error,
        )

    def _settle_orphaned_result(self) -> None:
        """A result still pending with no guard left (the VM stopped mid-update): settle it by
        what runs now."""
        result = self._root.read_result()
        if result is None or result.get("ok") is not None or self._root.live_lock() is not None:
            return
        try:
            current = self._root.current()
        except UpdateFailed:
            current = None
        ok = current is not None and current.name == result.get("release")
        self._root.write_result(
            from_version=str(result.get("from")),
            to_version=str(result.get("to")),
            release=str(result.get("release")),
            ok=ok,
            error=None if ok else f"the guard ended without a result; version {self._version} runs",
        )
        self._logger.warning("update_result_settled", ok=ok, release=result.get("release"))

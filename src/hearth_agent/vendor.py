"""Vendor CLI logins (codex, claude, gemini) run under a pseudo-terminal, and their status checks.

Each vendor CLI has its own login command, prompts and callback server; what they share is run
here (see the runner contract in ``hearth_agent.login``):

- The CLI runs under ``pty.fork`` in a private directory (0700) that is its ``HOME``, with a clean
  environment: ``CI`` and ``DEBIAN_FRONTEND=noninteractive`` would switch Gemini to a paste-the-code
  flow. It starts through ``child_exec``'s trampoline, so it gets default SIGPIPE and SIGXFSZ (not
  the agent's ignored ones) and no LC_CTYPE but its recipe's. ``BROWSER`` points at a helper that
  appends the URL it is given to a file the runner reads; the same helper is on ``PATH`` as
  ``xdg-open`` because Gemini ignores ``BROWSER``.
- Files the CLI needs before it shows a login (onboarding done, the folder trusted) are written
  up front from ``VendorLogin.prepare``.
- The terminal output goes through ``terminal.Screen``; the prompts the CLI is known to show are
  answered in order from ``VendorLogin.steps``. A screen that settles on something that looks like
  a question nobody scripted fails the login with ``unexpected_prompt`` rather than typing blindly.
- The credential file (``providers.CredentialFormat.path`` under the private home) is polled;
  once it parses and validates, its bytes are the captured document. The CLI exiting without it
  fails the login with ``cli_exited``.
- The CLI leads a session of its own, recorded while it runs (``records``) as an exec's is: an
  agent started after a crash of this one kills it and whatever it started (``exec_records``).
- A CLI killed by a crash signal (SIGSEGV, SIGBUS, SIGILL, SIGABRT, SIGFPE), or ending with one of
  its recipe's ``crash_exits``, before it handed over its URL is started again (``START_ATTEMPTS``
  in all), in a fresh private directory: Node under emulation (TCG) was seen to crash Gemini at
  start now and then, twice in a row once (SIGSEGV, then its WASM layout engine's abort). A last
  crash, or a crash once the user has the URL, fails the login as any other exit does.

This module runs the login; each CLI's recipe is in ``vendor_catalog``, the prompt answering in
``vendor_script`` and the offline status check in ``vendor_status``, whose public names it
re-exports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import shlex
import shutil
import signal
import struct
import tempfile
import termios
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from hearth_agent.child_exec import terminal_program_argv
from hearth_agent.errors import AgentError, InvalidInput
from hearth_agent.exec_records import ExecRecords
from hearth_agent.log import JsonLogger
from hearth_agent.login import LoginSession, proxy_field, timeout_field
from hearth_agent.providers import CredentialFormat, get_provider
from hearth_agent.terminal import Screen
from hearth_agent.vendor_catalog import (
    VENDOR_LOGINS,
    PromptStep,
    VendorLogin,
    default_search_path,
    vendor_login,
)
from hearth_agent.vendor_script import SETTLE_S, PromptScript, redact
from hearth_agent.vendor_status import StatusReport, cli_status

DEFAULT_DEADLINE_S = 900.0
MAX_DEADLINE_S = 86400.0
# How long the CLI may take to hand over its authorize URL (a 380 MB binary under emulation).
START_TIMEOUT_S = 180.0
SCREEN_ROWS, SCREEN_COLS = 40, 120
_POLL_S = 0.2
HELPER_NAME = "hearth-open-url"
# Signals that mean the CLI crashed (rather than being told to stop): worth another start.
CRASH_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGABRT, signal.SIGFPE}
)
START_ATTEMPTS = 3

__all__ = [
    "VENDOR_LOGINS",
    "PromptStep",
    "StatusReport",
    "VendorLogin",
    "VendorLoginRunner",
    "VendorStartFailed",
    "cli_status",
    "vendor_login",
]


class VendorStartFailed(AgentError, http_status=502):
    """The vendor CLI could not start a login (502); ``code`` is the session's error."""

    def __init__(self, message: str, *, code: str, crashed: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.crashed = crashed  # killed by a crash signal: another start may well succeed


def _deadline_from(body: Mapping[str, object]) -> float:
    deadline_s = timeout_field(body, default=DEFAULT_DEADLINE_S, maximum=MAX_DEADLINE_S)
    unknown = sorted(set(body) - {"provider", "timeout_s", "proxy"})
    if unknown:
        raise InvalidInput(f"unknown field(s) for a vendor login: {', '.join(unknown)}")
    return deadline_s


class VendorLoginRunner:
    """Runs one vendor CLI's login; see the module docstring."""

    def __init__(
        self,
        login: VendorLogin,
        *,
        work_root: Path,
        logger: JsonLogger,
        deadline_s: float = DEFAULT_DEADLINE_S,
        start_timeout_s: float = START_TIMEOUT_S,
        display: str | None = None,
        search_path: str | None = None,
        proxy: str | None = None,
        records: ExecRecords | None = None,
    ) -> None:
        self._login = login
        self._records = records
        self._proxy = proxy
        self._provider: CredentialFormat = get_provider(login.provider)
        self._work_root = work_root
        self._logger = logger
        self._deadline_s = deadline_s
        self._start_timeout_s = start_timeout_s
        self._display = display if display is not None else os.environ.get("DISPLAY", ":0")
        self._search_path = search_path if search_path is not None else default_search_path()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._url_ready = threading.Event()
        self._url: str | None = None
        self._start_error: VendorStartFailed | None = None
        self._dir: Path | None = None
        self._pid: int | None = None
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._exit: str | None = None  # how the CLI ended, once reaped
        self._crashed = False  # ended by one of CRASH_SIGNALS or the recipe's crash_exits
        self._cancelled = False  # cancel() was called: no further start
        self.screen_text = ""  # the last screen, URLs redacted (for logs and tests)

    @classmethod
    def from_request(
        cls,
        body: Mapping[str, object],
        *,
        work_root: Path,
        logger: JsonLogger,
        records: ExecRecords | None = None,
    ) -> VendorLoginRunner:
        """The runner for a ``POST /login/start`` body naming a vendor provider."""
        name = body.get("provider")
        login = vendor_login(name) if isinstance(name, str) else None
        if login is None:
            raise InvalidInput(f"provider {name!r} has no vendor CLI login")
        return cls(
            login,
            work_root=work_root,
            logger=logger,
            deadline_s=_deadline_from(body),
            proxy=proxy_field(body),
            records=records,
        )

    @property
    def deadline_s(self) -> float:
        """Seconds the user has to finish, from the start."""
        return self._deadline_s

    @property
    def home(self) -> Path | None:
        """The CLI's private home while the login runs."""
        return None if self._dir is None else self._dir / "home"

    # -- start --------------------------------------------------------------------------------

    def start(self, session: LoginSession) -> str:
        """Spawn the CLI and return the authorize URL it hands to its browser.

        A CLI that crashes before handing over its URL is started again (``START_ATTEMPTS``).
        """
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start_once(session)
            except VendorStartFailed as exc:
                if not exc.crashed or attempt == START_ATTEMPTS or self._cancelled:
                    raise
                self._logger.warning(
                    "vendor_cli_crashed_at_start",
                    provider=self._login.provider,
                    message=exc.message,
                    attempt=attempt,
                )
                self._reset()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _reset(self) -> None:
        """Forget a failed attempt (already released) so that the next one starts clean."""
        self._stop.clear()
        self._url_ready.clear()
        with self._lock:
            self._url, self._start_error = None, None
        self._thread, self._exit, self._crashed = None, None, False
        self.screen_text = ""

    def _start_once(self, session: LoginSession) -> str:
        command = self._login.command
        if shutil.which(command[0], path=self._search_path) is None:
            raise VendorStartFailed(
                f"the {command[0]!r} command is not installed in this VM "
                "(images with vendor CLIs: recipes cli and browser)",
                code="cli_not_installed",
            )
        self._work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory = Path(
            tempfile.mkdtemp(prefix=f"login-{self._login.provider}-", dir=self._work_root)
        )
        self._dir = directory
        home, bin_dir, work = directory / "home", directory / "bin", directory / "home" / "work"
        tmp = directory / "tmp"
        url_file = directory / "urls"
        for path in (home, bin_dir, work, tmp, *(tmp / d for d in self._login.tmp_dirs)):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for relative, document in self._login.prepare(home, work).items():
            target = home / relative
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            target.write_text(json.dumps(document))
            target.chmod(0o600)
        helper = f'#!/bin/sh\numask 077\nprintf "%s\\n" "$1" >> {shlex.quote(str(url_file))}\n'
        for name in (HELPER_NAME, "xdg-open"):
            (bin_dir / name).write_text(helper)
            (bin_dir / name).chmod(0o700)
        env = {
            "HOME": str(home),
            "PATH": f"{bin_dir}:{self._search_path}",
            "TERM": "xterm-256color",
            "COLORTERM": "truecolor",
            "LANG": "C.UTF-8",
            "USER": "root",
            "SHELL": "/bin/sh",
            "DISPLAY": self._display,
            "BROWSER": str(bin_dir / HELPER_NAME),
            # The CLI's temporary files stay in its private directory, removed with it.
            "TMPDIR": str(tmp),
            **self._login.env,
        }
        if self._proxy is not None:
            # The CLI's own requests (the token exchange) go through the egress proxy too; its
            # callback server on the loopback does not.
            for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
                env[name] = self._proxy
            env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
        argv = terminal_program_argv(command, env)  # built here: the child only chdirs and execs
        pid, fd = pty.fork()
        if pid == 0:  # the child: become the CLI
            try:
                os.chdir(work)
                os.execve(argv[0], argv, env)  # noqa: S606 - a fixed command
            finally:
                os._exit(127)
        self._pid, self._fd = pid, fd
        if self._records is not None:  # removed once it is reaped (``_reaped``)
            self._records.add(pid)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", SCREEN_ROWS, SCREEN_COLS, 0, 0))
        self._logger.info(
            "vendor_login_spawned",
            provider=self._login.provider,
            command=redact(" ".join(command)),
            pid=pid,
        )
        self._thread = threading.Thread(
            target=self._drive,
            args=(session, url_file, home / self._provider.path),
            name=f"vendor-{self._login.provider}",
            daemon=True,
        )
        self._thread.start()
        if not self._url_ready.wait(self._start_timeout_s):
            self._start_error = VendorStartFailed(
                f"{command[0]} did not hand over a login URL within {self._start_timeout_s:g} s",
                code="no_login_url",
            )
        with self._lock:
            url, error = self._url, self._start_error
        if url is None:
            self._release()
            assert error is not None
            raise error
        return url

    # -- the driver thread ----------------------------------------------------------------------

    def _drive(self, session: LoginSession, url_file: Path, credential_file: Path) -> None:
        screen = Screen(SCREEN_ROWS, SCREEN_COLS)
        fd = self._fd
        assert fd is not None
        script = PromptScript(self._login)
        changed_at = time.monotonic()
        seen_version = -1
        exited = False
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([fd], [], [], _POLL_S)
                if readable:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:  # EIO: the CLI closed its terminal (exited)
                        data = b""
                    if not data:
                        exited = True
                    else:
                        screen.feed(data)
                        replies = screen.take_replies()
                        if replies:
                            os.write(fd, replies)
                now = time.monotonic()
                if screen.version != seen_version:
                    seen_version, changed_at = screen.version, now
                    self.screen_text = redact(screen.text())
                settled = now - changed_at >= SETTLE_S
                text = screen.normalized()
                if self._url is None:
                    self._pick_url(url_file)
                if self._capture(session, credential_file):
                    return
                if exited or self._child_exited():
                    self._ended_without_credentials(session, credential_file)
                    return
                failure = next((f for f in self._login.failures if f in text), None)
                if failure is not None and settled:
                    self._fail(session, "cli_login_failed", f"{self._login.command[0]}: {failure}")
                    return
                action = script.next_action(screen, now=now, changed_at=changed_at)
                if isinstance(action, PromptStep):
                    os.write(fd, action.keys.encode())
                    self._logger.info(
                        "vendor_prompt_answered", provider=self._login.provider, prompt=action.name
                    )
                elif action is not None:
                    self._fail(
                        session,
                        "unexpected_prompt",
                        f"{self._login.command[0]} asks something no script answers: {action!r}",
                    )
                    return
        except Exception as exc:  # the thread must end the session, whatever happened
            self._fail(session, "internal", f"vendor login driver failed: {type(exc).__name__}")

    def _pick_url(self, url_file: Path) -> None:
        try:
            lines = url_file.read_text().splitlines()
        except OSError:
            return
        for line in lines:
            if line.startswith(("https://", "http://")):
                with self._lock:
                    self._url = line.strip()
                self._url_ready.set()
                self._logger.info("vendor_login_url_captured", provider=self._login.provider)
                return

    def _capture(self, session: LoginSession, credential_file: Path) -> bool:
        """Capture the credential file if it is complete and valid; whether the thread is done."""
        try:
            data = credential_file.read_bytes()
            document = json.loads(data)
            self._provider.validate(document)
        except (OSError, ValueError, AgentError):
            return False  # absent, half-written or not yet in its final shape
        if self._url is None:  # credentials before any URL: nothing to wait for any more
            with self._lock:
                self._url = "about:blank"
            self._url_ready.set()
        captured = session.capture(data)
        self._logger.info("vendor_login_captured", provider=self._login.provider, accepted=captured)
        return True

    def _child_exited(self) -> bool:
        pid = self._pid
        if pid is None:
            return True
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            self._pid = None
            self._reaped(pid)
            self._exit = _describe_exit(status)
            self._crashed = (os.WIFSIGNALED(status) and os.WTERMSIG(status) in CRASH_SIGNALS) or (
                os.WIFEXITED(status) and os.WEXITSTATUS(status) in self._login.crash_exits
            )
        return bool(done)

    def _ended_without_credentials(self, session: LoginSession, credential_file: Path) -> None:
        # A CLI writes its file and then exits: look once more before calling it a failure.
        time.sleep(_POLL_S)
        if self._capture(session, credential_file):
            return
        if self._exit is None:  # its terminal closed first: reap it to say how it ended
            deadline = time.monotonic() + 2.0
            while not self._child_exited() and time.monotonic() < deadline:
                time.sleep(0.05)
        how = f" ({self._exit})" if self._exit else ""
        self._fail(
            session,
            "cli_exited",
            f"{self._login.command[0]} exited{how} without writing {self._provider.display_path}",
            crashed=self._crashed,
        )

    def _fail(
        self, session: LoginSession, code: str, message: str, *, crashed: bool = False
    ) -> None:
        if self._stop.is_set():
            return  # cancelled (or timed out): the CLI dying now is our doing, not a failure
        self._logger.info(
            "vendor_login_failed",
            provider=self._login.provider,
            error=code,
            message=redact(message),
            screen=[line for line in self.screen_text.splitlines() if line.strip()][-20:],
        )
        with self._lock:
            starting = self._url is None
            if starting:
                # start() raises this, and the registry fails the session (or start retries).
                self._start_error = VendorStartFailed(redact(message), code=code, crashed=crashed)
        self._url_ready.set()
        if not starting:
            session.fail(code)

    # -- cancel -------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Kill the CLI's process group, stop the driver and remove the private directory."""
        self._cancelled = True
        self._release()

    def _release(self) -> None:
        self._stop.set()
        pid, self._pid = self._pid, None
        if pid is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)  # pty.fork made the child a session (and group) leader
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    try:
                        done, _ = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        break  # the driver reaped it (and forgot its record)
                    if done:
                        self._reaped(pid)
                        break
                    time.sleep(0.05)
                else:
                    continue
                break
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _reaped(self, pid: int) -> None:
        """The CLI ``pid`` was reaped: nothing of it is left for a later agent to kill."""
        if self._records is not None:
            self._records.remove(pid)


def _describe_exit(status: int) -> str:
    """``exit status 1`` or ``killed by SIGKILL`` (the kernel's OOM killer, for one)."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    return f"exit status {os.WEXITSTATUS(status)}"

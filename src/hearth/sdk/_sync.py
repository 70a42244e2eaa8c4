"""The synchronous client: ``Hearth``, its VMs and its logins, over one ``httpx.Client``.

Every request is built and every answer read by ``_calls`` and ``_exec``; this module only
sends them (``AsyncHearth`` in ``_async`` is the same over ``httpx.AsyncClient``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Self, TypeVar, Unpack

import httpx
from httpx_sse import connect_sse

from hearth.sdk import _calls as calls
from hearth.sdk._config import (
    DEFAULT_RESUME,
    DEFAULT_TIMEOUT_S,
    ClientConfig,
    Deadline,
    ResumePolicy,
)
from hearth.sdk._errors import HearthConnectionError
from hearth.sdk._exec import (
    ExecCollector,
    ExecEvent,
    ExecFollower,
    ExecOptions,
    ExecResult,
    KillSignal,
    exec_body,
    kill_exec,
)
from hearth.sdk._files import Files
from hearth.sdk._follow import Follower, StreamBroke
from hearth.sdk._models import AuthSessionInfo, Bound, VmInfo
from hearth.sdk._runs import (
    RunCollector,
    RunEvent,
    RunFollower,
    RunInfo,
    RunOptions,
    RunResult,
    cancel_run,
    get_run,
    list_runs,
    run_body,
    start_run,
)

T = TypeVar("T")
E = TypeVar("E")


class _Http:
    """Where the sync client meets the network: one call, or one command's event stream."""

    def __init__(self, config: ClientConfig, transport: httpx.BaseTransport | None) -> None:
        self.config = config
        self._client = httpx.Client(**config.client_args(), transport=transport)

    def call(self, call: calls.Call[T]) -> T:
        try:
            answer = self._client.request(
                **call.send_args(boot_timeout_s=self.config.boot_timeout_s)
            )
        except httpx.TransportError as exc:
            raise HearthConnectionError.of_transport(self.config.url, call.method, exc) from exc
        return call.result(answer.status_code, answer.content)

    def events(self, follower: Follower[E]) -> Iterator[E]:
        timeout = self.config.stream_timeout()
        while (request := follower.request()) is not None:
            try:
                with connect_sse(self._client, **request.send_args(), timeout=timeout) as source:
                    answer = source.response
                    if answer.is_error:
                        follower.refused(answer.status_code, answer.read())
                    follower.opened(answer.status_code, answer.headers)
                    for sse in source.iter_sse():
                        if (event := follower.accept(sse)) is not None:
                            yield event
                follower.ended()
            except (httpx.TransportError, StreamBroke) as exc:
                time.sleep(follower.resume_delay_s(exc))

    def close(self) -> None:
        self._client.close()

    @property
    def client(self) -> httpx.Client:
        """The HTTP client (file transfers stream through it)."""
        return self._client


class Vm(Bound[_Http], VmInfo):
    """A VM: the API's fields as attributes, and what can be done with it.

    ``refresh``, ``pause``, ``resume`` and ``destroy`` update this object from the API's answer
    and return it.
    """

    def refresh(self) -> Self:
        """Read the VM again."""
        return self.take(self._http.call(calls.get_vm(self.id)))

    def set_lifetime(self, **lifetime: object) -> Self:
        """Change the VM's lifetime: ``timeout_s``, ``timeout_action``, ``idle_timeout_s``,
        ``idle_action``, ``auto_resume`` (those given; a timeout of None is no limit)."""
        return self.take(self._http.call(calls.change_vm(self.id, lifetime)))

    def pause(self) -> Self:
        """Pause the VM (vCPUs stop, memory is kept)."""
        return self.take(self._http.call(calls.pause_vm(self.id)))

    def hibernate(self) -> Self:
        """Save the VM to disk and end its VMM (it holds no memory until resumed)."""
        return self.take(self._http.call(calls.hibernate_vm(self.id)))

    def resume(self) -> Self:
        """Resume a paused VM, or wake a hibernated one."""
        return self.take(self._http.call(calls.resume_vm(self.id)))

    def destroy(self) -> Self:
        """Destroy the VM (destroying it again is harmless)."""
        return self.take(self._http.call(calls.destroy_vm(self.id)))

    @property
    def files(self) -> Files:
        """The files of this CLI VM's workspace: ``write``, ``read``, ``read_stream``,
        ``download``, ``list``, ``remove``."""
        return Files(self._http, self.id)

    def terminal_url(self) -> str:
        """A one-time link to a terminal page with a login shell in this CLI VM: open it in a
        browser within ``HEARTH_TERMINAL_LINK_TTL_S`` (60 s); it works once."""
        return self._http.call(calls.open_terminal(self.id, self._http.config.url))

    def exec_stream(
        self,
        cmd: Sequence[str],
        **options: Unpack[ExecOptions],
    ) -> Iterator[ExecEvent]:
        """Run ``cmd`` (an argv, no shell) in this CLI VM; its events as they happen:
        ``ExecStarted``, ``ExecOutput`` chunks, then one ``ExecExit``. A stream that breaks
        off is picked up after the last event seen; nothing is lost or repeated."""
        body = exec_body(cmd, options)
        return self._http.events(ExecFollower(self.id, body, self._http.config.resume))

    def exec(
        self,
        cmd: Sequence[str],
        **options: Unpack[ExecOptions],
    ) -> ExecResult:
        """Run ``cmd`` to its end; what it wrote and how it ended (``.check()`` raises unless
        it exited 0)."""
        follower = ExecFollower(self.id, exec_body(cmd, options), self._http.config.resume)
        collector = ExecCollector()
        for event in self._http.events(follower):
            collector.add(event)
        return collector.result(exec_id=follower.exec_id)

    def kill_exec(self, exec_id: str, signal: KillSignal = "SIGKILL") -> bool:
        """Send ``signal`` to the whole process group of command ``exec_id`` (``ExecStarted``
        names it) and every process of its session; whether it got it (False: it had ended
        already). Its ``ExecExit`` then says ``killed`` (unless it still exited 0)."""
        return self._http.call(kill_exec(self.id, exec_id, signal))

    def start_run(self, provider: str, prompt: str, **options: Unpack[RunOptions]) -> RunInfo:
        """Start ``provider``'s CLI on ``prompt`` in this CLI VM (with the login delivered into
        it); the run, at once. Its events: ``run_events(run.id)``."""
        return self._http.call(start_run(self.id, run_body(provider, prompt, options)))

    def run_events(self, run_id: str, *, after: int = 0) -> Iterator[RunEvent]:
        """The run's events after id ``after`` as they come, to its last (``run.completed``
        or ``run.failed``); a stream that breaks off is picked up after the last event seen."""
        return self._http.events(
            RunFollower(self.id, run_id, self._http.config.resume, after=after)
        )

    def run_stream(
        self, provider: str, prompt: str, **options: Unpack[RunOptions]
    ) -> Iterator[RunEvent]:
        """``start_run`` then ``run_events``: ``message.delta`` text, tools, usage, the end. As
        ``exec_stream``, nothing is sent before the iteration begins: the run starts then."""
        yield from self.run_events(self.start_run(provider, prompt, **options).id)

    def run(self, provider: str, prompt: str, **options: Unpack[RunOptions]) -> RunResult:
        """Run ``provider``'s CLI on ``prompt`` to its end: the answer's text, usage, the CLI's
        session id (``resume=`` continues it), or why it failed."""
        run = self.start_run(provider, prompt, **options)
        collector = RunCollector(run.id)
        for event in self.run_events(run.id):
            collector.add(event)
        return collector.result()

    def runs(self) -> list[RunInfo]:
        """This VM's runs, newest first."""
        return self._http.call(list_runs(self.id))

    def get_run(self, run_id: str) -> RunInfo:
        """One run of this VM."""
        return self._http.call(get_run(self.id, run_id))

    def cancel_run(self, run_id: str) -> RunInfo:
        """End the run and everything its CLI started (it fails with ``cancelled``)."""
        return self._http.call(cancel_run(self.id, run_id))


class Vms:
    """``client.vms``: create, list and look up VMs."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def create(
        self,
        vm_type: str = "cli",
        *,
        user_id: str | None = None,
        vcpus: int | None = None,
        mem_mib: int | None = None,
        wait: bool = True,
        lifetime: Mapping[str, object] | None = None,
    ) -> Vm:
        """A new VM; with ``wait``, once its agent is healthy (``status`` ``ready``). A CLI VM
        may be given its ``lifetime`` (the fields of ``Vm.set_lifetime``)."""
        call = calls.create_vm(
            vm_type, user_id=user_id, vcpus=vcpus, mem_mib=mem_mib, wait=wait, lifetime=lifetime
        )
        return Vm(self._http, self._http.call(call))

    def get(self, vm_id: str) -> Vm:
        """One VM (``HearthApiError`` ``not_found`` for another user's)."""
        return Vm(self._http, self._http.call(calls.get_vm(vm_id)))

    def list(self, *, status: Sequence[str] | None = None) -> list[Vm]:
        """The caller's VMs (everybody's, for an admin key), oldest first, every page read: those
        not destroyed, or those in ``status`` (``["destroyed"]``: the ended ones)."""
        infos, after = self._http.call(calls.list_vms(status=status))
        while after is not None:
            more, after = self._http.call(calls.list_vms(status=status, after=after))
            infos += more
        return [Vm(self._http, info) for info in infos]


class AuthSession(Bound[_Http], AuthSessionInfo):
    """A login session: the API's fields as attributes, ``view_url`` for the user to open, and
    ``wait`` for its end."""

    def refresh(self) -> Self:
        """Read the session again."""
        return self.take(self._http.call(calls.get_auth(self.id)))

    def cancel(self) -> Self:
        """Cancel the login; answered once its Browser VM is gone."""
        return self.take(self._http.call(calls.cancel_auth(self.id)))

    def wait(self, timeout_s: float = 900.0, *, interval_s: float = 0.5) -> Self:
        """Poll until the session has ended; itself, final. WaitTimeout after ``timeout_s``."""
        deadline = Deadline(f"auth session {self.id}", timeout_s=timeout_s, interval_s=interval_s)
        while not self.refresh().ended:
            time.sleep(deadline.next_pause_s())
        return self


class Auth:
    """``client.auth``: start, look up and list logins."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def start(self, user_id: str | None, provider: str) -> AuthSession:
        """Start a login of ``user_id`` (None: the key's user) to ``provider``, or get the one
        in progress (whose ``view_url`` is then None)."""
        return AuthSession(self._http, self._http.call(calls.start_auth(user_id, provider)))

    def get(self, session_id: str) -> AuthSession:
        """One session."""
        return AuthSession(self._http, self._http.call(calls.get_auth(session_id)))

    def list(self, user_id: str | None = None) -> list[AuthSession]:
        """Sessions, oldest first, every page read (a user key sees its own only)."""
        infos, after = self._http.call(calls.list_auth(user_id))
        while after is not None:
            more, after = self._http.call(calls.list_auth(user_id, after=after))
            infos += more
        return [AuthSession(self._http, info) for info in infos]


class Hearth:
    """A client of Hearth's API. ``url`` and ``key`` default to ``HEARTH_URL`` and
    ``HEARTH_API_KEY``; ``transport`` replaces httpx's (e.g. ``httpx.MockTransport``).
    Use it in a ``with`` block, or ``close()`` it."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        resume: ResumePolicy = DEFAULT_RESUME,
    ) -> None:
        self.config = ClientConfig.resolve(url, key, timeout_s=timeout, resume=resume)
        self._http = _Http(self.config, transport)
        self.vms = Vms(self._http)
        self.auth = Auth(self._http)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

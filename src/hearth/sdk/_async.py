"""The asynchronous client: ``AsyncHearth``, its VMs and its logins, over ``httpx.AsyncClient``.

The same as ``Hearth`` (``_sync``), with ``await``: requests are built and answers read by
``_calls`` and ``_exec``, and this module only sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Self, TypeVar, Unpack

import httpx
from httpx_sse import aconnect_sse

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
from hearth.sdk._files import AsyncFiles
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


class _AsyncHttp:
    """Where the async client meets the network: one call, or one command's event stream."""

    def __init__(self, config: ClientConfig, transport: httpx.AsyncBaseTransport | None) -> None:
        self.config = config
        self._client = httpx.AsyncClient(**config.client_args(), transport=transport)

    async def call(self, call: calls.Call[T]) -> T:
        try:
            answer = await self._client.request(
                **call.send_args(boot_timeout_s=self.config.boot_timeout_s)
            )
        except httpx.TransportError as exc:
            raise HearthConnectionError.of_transport(self.config.url, call.method, exc) from exc
        return call.result(answer.status_code, answer.content)

    async def events(self, follower: Follower[E]) -> AsyncIterator[E]:
        timeout = self.config.stream_timeout()
        while (request := follower.request()) is not None:
            try:
                async with aconnect_sse(
                    self._client, **request.send_args(), timeout=timeout
                ) as source:
                    answer = source.response
                    if answer.is_error:
                        follower.refused(answer.status_code, await answer.aread())
                    follower.opened(answer.status_code, answer.headers)
                    async for sse in source.aiter_sse():
                        if (event := follower.accept(sse)) is not None:
                            yield event
                follower.ended()
            except (httpx.TransportError, StreamBroke) as exc:
                await asyncio.sleep(follower.resume_delay_s(exc))

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client (file transfers stream through it)."""
        return self._client


class AsyncVm(Bound[_AsyncHttp], VmInfo):
    """A VM, as ``Vm`` is, with coroutines: ``refresh``, ``pause``, ``resume`` and ``destroy``
    update this object from the API's answer and return it."""

    async def refresh(self) -> Self:
        """Read the VM again."""
        return self.take(await self._http.call(calls.get_vm(self.id)))

    async def set_lifetime(self, **lifetime: object) -> Self:
        """Change the VM's lifetime: ``timeout_s``, ``timeout_action``, ``idle_timeout_s``,
        ``idle_action``, ``auto_resume`` (those given; a timeout of None is no limit)."""
        return self.take(await self._http.call(calls.change_vm(self.id, lifetime)))

    async def pause(self) -> Self:
        """Pause the VM (vCPUs stop, memory is kept)."""
        return self.take(await self._http.call(calls.pause_vm(self.id)))

    async def hibernate(self) -> Self:
        """Save the VM to disk and end its VMM (it holds no memory until resumed)."""
        return self.take(await self._http.call(calls.hibernate_vm(self.id)))

    async def resume(self) -> Self:
        """Resume a paused VM, or wake a hibernated one."""
        return self.take(await self._http.call(calls.resume_vm(self.id)))

    async def destroy(self) -> Self:
        """Destroy the VM (destroying it again is harmless)."""
        return self.take(await self._http.call(calls.destroy_vm(self.id)))

    @property
    def files(self) -> AsyncFiles:
        """The files of this CLI VM's workspace: ``write``, ``read``, ``read_stream``,
        ``download``, ``list``, ``remove``."""
        return AsyncFiles(self._http, self.id)

    async def terminal_url(self) -> str:
        """``Vm.terminal_url``: a one-time link to a terminal page in this CLI VM."""
        return await self._http.call(calls.open_terminal(self.id, self._http.config.url))

    def exec_stream(
        self,
        cmd: Sequence[str],
        **options: Unpack[ExecOptions],
    ) -> AsyncIterator[ExecEvent]:
        """``Vm.exec_stream`` for ``async for``: the command's events as they happen, picked up
        again after a break. Leaving the loop early: close it (``contextlib.aclosing``)."""
        body = exec_body(cmd, options)
        return self._http.events(ExecFollower(self.id, body, self._http.config.resume))

    async def exec(
        self,
        cmd: Sequence[str],
        **options: Unpack[ExecOptions],
    ) -> ExecResult:
        """Run ``cmd`` to its end, as ``Vm.exec`` does."""
        follower = ExecFollower(self.id, exec_body(cmd, options), self._http.config.resume)
        collector = ExecCollector()
        async for event in self._http.events(follower):
            collector.add(event)
        return collector.result(exec_id=follower.exec_id)

    async def kill_exec(self, exec_id: str, signal: KillSignal = "SIGKILL") -> bool:
        """``Vm.kill_exec``: signal command ``exec_id``; whether it got the signal."""
        return await self._http.call(kill_exec(self.id, exec_id, signal))

    async def start_run(self, provider: str, prompt: str, **options: Unpack[RunOptions]) -> RunInfo:
        """``Vm.start_run``: the run, at once."""
        return await self._http.call(start_run(self.id, run_body(provider, prompt, options)))

    def run_events(self, run_id: str, *, after: int = 0) -> AsyncIterator[RunEvent]:
        """``Vm.run_events`` for ``async for``."""
        return self._http.events(
            RunFollower(self.id, run_id, self._http.config.resume, after=after)
        )

    async def run_stream(
        self, provider: str, prompt: str, **options: Unpack[RunOptions]
    ) -> AsyncIterator[RunEvent]:
        """``Vm.run_stream`` for ``async for``: ``start_run`` then ``run_events``, the run
        started when the iteration begins."""
        run = await self.start_run(provider, prompt, **options)
        async for event in self.run_events(run.id):
            yield event

    async def run(self, provider: str, prompt: str, **options: Unpack[RunOptions]) -> RunResult:
        """``Vm.run``: the run to its end."""
        run = await self.start_run(provider, prompt, **options)
        collector = RunCollector(run.id)
        async for event in self.run_events(run.id):
            collector.add(event)
        return collector.result()

    async def runs(self) -> list[RunInfo]:
        """This VM's runs, newest first."""
        return await self._http.call(list_runs(self.id))

    async def get_run(self, run_id: str) -> RunInfo:
        """One run of this VM."""
        return await self._http.call(get_run(self.id, run_id))

    async def cancel_run(self, run_id: str) -> RunInfo:
        """End the run and everything its CLI started (it fails with ``cancelled``)."""
        return await self._http.call(cancel_run(self.id, run_id))


class AsyncVms:
    """``client.vms`` of ``AsyncHearth``."""

    def __init__(self, http: _AsyncHttp) -> None:
        self._http = http

    async def create(
        self,
        vm_type: str = "cli",
        *,
        user_id: str | None = None,
        vcpus: int | None = None,
        mem_mib: int | None = None,
        wait: bool = True,
        lifetime: Mapping[str, object] | None = None,
    ) -> AsyncVm:
        """A new VM, as ``Vms.create`` makes it."""
        call = calls.create_vm(
            vm_type, user_id=user_id, vcpus=vcpus, mem_mib=mem_mib, wait=wait, lifetime=lifetime
        )
        return AsyncVm(self._http, await self._http.call(call))

    async def get(self, vm_id: str) -> AsyncVm:
        """One VM (``HearthApiError`` ``not_found`` for another user's)."""
        return AsyncVm(self._http, await self._http.call(calls.get_vm(vm_id)))

    async def list(self, *, status: Sequence[str] | None = None) -> list[AsyncVm]:
        """The caller's VMs, every page read, as ``Vms.list`` lists them."""
        infos, after = await self._http.call(calls.list_vms(status=status))
        while after is not None:
            more, after = await self._http.call(calls.list_vms(status=status, after=after))
            infos += more
        return [AsyncVm(self._http, info) for info in infos]


class AsyncAuthSession(Bound[_AsyncHttp], AuthSessionInfo):
    """A login session, as ``AuthSession`` is, with coroutines."""

    async def refresh(self) -> Self:
        """Read the session again."""
        return self.take(await self._http.call(calls.get_auth(self.id)))

    async def cancel(self) -> Self:
        """Cancel the login; answered once its Browser VM is gone."""
        return self.take(await self._http.call(calls.cancel_auth(self.id)))

    async def wait(self, timeout_s: float = 900.0, *, interval_s: float = 0.5) -> Self:
        """Poll until the session has ended; itself, final. WaitTimeout after ``timeout_s``."""
        deadline = Deadline(f"auth session {self.id}", timeout_s=timeout_s, interval_s=interval_s)
        while not (await self.refresh()).ended:
            await asyncio.sleep(deadline.next_pause_s())
        return self


class AsyncAuth:
    """``client.auth`` of ``AsyncHearth``."""

    def __init__(self, http: _AsyncHttp) -> None:
        self._http = http

    async def start(self, user_id: str | None, provider: str) -> AsyncAuthSession:
        """Start a login, as ``Auth.start`` does."""
        info = await self._http.call(calls.start_auth(user_id, provider))
        return AsyncAuthSession(self._http, info)

    async def get(self, session_id: str) -> AsyncAuthSession:
        """One session."""
        return AsyncAuthSession(self._http, await self._http.call(calls.get_auth(session_id)))

    async def list(self, user_id: str | None = None) -> list[AsyncAuthSession]:
        """Sessions, oldest first, every page read, as ``Auth.list`` lists them."""
        infos, after = await self._http.call(calls.list_auth(user_id))
        while after is not None:
            more, after = await self._http.call(calls.list_auth(user_id, after=after))
            infos += more
        return [AsyncAuthSession(self._http, info) for info in infos]


class AsyncHearth:
    """A client of Hearth's API for asyncio, configured as ``Hearth`` is (``transport`` an
    ``httpx.AsyncBaseTransport``, e.g. ``httpx.ASGITransport(app)``). Use it in an
    ``async with`` block, or ``await aclose()``."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        resume: ResumePolicy = DEFAULT_RESUME,
    ) -> None:
        self.config = ClientConfig.resolve(url, key, timeout_s=timeout, resume=resume)
        self._http = _AsyncHttp(self.config, transport)
        self.vms = AsyncVms(self._http)
        self.auth = AsyncAuth(self._http)

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

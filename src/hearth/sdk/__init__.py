"""Hearth's Python SDK: VMs, commands in them and logins, through the REST API (sync and async).

    from hearth.sdk import Hearth

    with Hearth() as client:  # HEARTH_URL, HEARTH_API_KEY
        vm = client.vms.create("cli")
        print(vm.exec(["uname", "-a"]).check().stdout.decode())
        vm.destroy()

``AsyncHearth`` is the same for asyncio. It needs httpx and httpx-sse only: nothing of the
server side is imported.
"""

from __future__ import annotations

from hearth.sdk._async import AsyncAuth, AsyncAuthSession, AsyncHearth, AsyncVm, AsyncVms
from hearth.sdk._config import ClientConfig, ResumePolicy
from hearth.sdk._errors import (
    ExecFailed,
    HearthApiError,
    HearthConfigError,
    HearthConnectionError,
    HearthSdkError,
    InvalidArchive,
    LocalFileChanged,
    WaitTimeout,
)
from hearth.sdk._exec import ExecEvent, ExecExit, ExecOutput, ExecResult, ExecStarted
from hearth.sdk._files import AsyncFiles, AsyncFileStream, Files, FileStream
from hearth.sdk._models import AuthSessionInfo, AuthStatus, VmInfo, VmStatus, VmType
from hearth.sdk._runs import RunEvent, RunInfo, RunResult
from hearth.sdk._sync import Auth, AuthSession, Hearth, Vm, Vms
from hearth.sdk._transfer import FileEntry, FileWritten

__all__ = [
    "AsyncAuth",
    "AsyncAuthSession",
    "AsyncFileStream",
    "AsyncFiles",
    "AsyncHearth",
    "AsyncVm",
    "AsyncVms",
    "Auth",
    "AuthSession",
    "AuthSessionInfo",
    "AuthStatus",
    "ClientConfig",
    "ExecEvent",
    "ExecExit",
    "ExecFailed",
    "ExecOutput",
    "ExecResult",
    "ExecStarted",
    "FileEntry",
    "FileStream",
    "FileWritten",
    "Files",
    "Hearth",
    "HearthApiError",
    "HearthConfigError",
    "HearthConnectionError",
    "HearthSdkError",
    "InvalidArchive",
    "LocalFileChanged",
    "ResumePolicy",
    "RunEvent",
    "RunInfo",
    "RunResult",
    "Vm",
    "VmInfo",
    "VmStatus",
    "VmType",
    "Vms",
    "WaitTimeout",
]

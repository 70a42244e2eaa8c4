"""The SDK's own logic, without a server: reading answers and errors, configuration, and how a
command's event stream is followed across breaks (scripted with ``httpx.MockTransport``).

What it does against the real API, over real HTTP, is in ``tests/integration/test_sdk.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest

from hearth.sdk import (
    AsyncHearth,
    ExecExit,
    ExecOutput,
    ExecStarted,
    Hearth,
    HearthApiError,
    HearthConfigError,
    HearthConnectionError,
    ResumePolicy,
    VmInfo,
    VmStatus,
)
from hearth.sdk._config import DEFAULT_RESUME, Deadline
from hearth.sdk._errors import WaitTimeout

URL = "http://hearth.test"
VM = {
    "id": "vm-1",
    "userId": "ann",
    "vmType": "cli",
    "status": "ready",
    "backend": "qemu",
    "vcpus": 1,
    "memMib": 512,
    "agentUrl": None,
    "bootMode": "restore",
    "diskBytes": None,
    "createdAt": "2026-12-03T20:00:00Z",
    "readyAt": None,
    "destroyedAt": None,
    "error": None,
    "somethingNew": 1,
}
FAST = ResumePolicy(max_resumes=2, first_delay_s=0.0)


def sse(event: str, data: dict[str, object], event_id: int | None = None) -> bytes:
    """One event as the API writes it."""
    line_id = "" if event_id is None else f"id: {event_id}\n"
    return f"event: {event}\ndata: {json.dumps(data)}\n{line_id}\n".encode()


class BreaksOff(httpx.SyncByteStream):
    """A body that sends ``chunks`` and then breaks off like a dropped connection."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


def stream(chunks: list[bytes], *, broken: bool = False) -> httpx.Response:
    """An event-stream answer of the exec routes."""
    headers = {"content-type": "text/event-stream", "x-hearth-exec-id": "x1"}
    if broken:
        return httpx.Response(200, headers=headers, stream=BreaksOff(chunks))
    return httpx.Response(200, headers=headers, content=b"".join(chunks))


def scripted(*answers: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering ``answers`` in turn, and the requests it got."""
    pending, seen = list(answers), list[httpx.Request]()

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return pending.pop(0)

    return httpx.MockTransport(handle), seen


def client_with(
    *answers: httpx.Response, policy: ResumePolicy = FAST
) -> tuple[Hearth, list[httpx.Request]]:
    """A sync client over ``scripted(*answers)``, and the requests it sent."""
    transport, seen = scripted(*answers)
    return Hearth(URL, "k", transport=transport, resume=policy), seen


STARTED = sse("started", {"execId": "x1", "pid": 7}, 0)
LINE1 = sse("stdout", {"data": "one\n"}, 1)
LINE2 = sse("stderr", {"data": "dHdvCg==", "encoding": "base64"}, 2)
EXIT = sse("exit", {"code": 0, "signal": None, "durationMs": 5, "reason": "exited"}, 3)


def test_the_sdk_imports_nothing_of_the_server() -> None:
    probe = (
        "import sys, hearth.sdk; "
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'sqlalchemy', 'pydantic', 'starlette', 'hearth_agent') "
        "or (m.startswith('hearth.') and not m.startswith('hearth.sdk'))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert found.stdout.split() == []


def test_a_vm_reads_camel_case_typed_and_ignores_fields_it_does_not_know() -> None:
    vm = VmInfo.from_wire(VM)
    assert (vm.user_id, vm.mem_mib, vm.status) == ("ann", 512, VmStatus.READY)
    assert vm.created_at is not None
    assert vm.created_at.year == 2026
    assert VmInfo.from_wire({**VM, "status": "sleeping"}).status == "sleeping"


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (404, {"error": {"code": "not_found", "message": "no VM vm-1"}}, "not_found", "no VM vm-1"),
        (400, "Invalid HTTP request", "http_400", "Invalid HTTP request"),
        (502, "", "http_502", "HTTP 502"),
        # Not the API's answer at all (a proxy redirecting http to https): typed, no TypeError.
        (308, "", "http_308", "HTTP 308"),
    ],
)
def test_every_error_answer_becomes_hearth_api_error(
    status: int, body: object, code: str, message: str
) -> None:
    content = json.dumps(body).encode() if isinstance(body, dict) else str(body).encode()
    client, _ = client_with(httpx.Response(status, content=content))
    with client, pytest.raises(HearthApiError) as caught:
        client.vms.list()
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        status,
        code,
        message,
    )


def test_a_2xx_answer_that_is_not_the_apis_is_a_typed_error() -> None:
    client, _ = client_with(httpx.Response(200, content=b"<html>a captive portal</html>"))
    with client, pytest.raises(HearthApiError) as caught:
        client.vms.list()
    assert caught.value.code == "unexpected_answer"


def test_url_and_key_come_from_the_environment_else_the_key_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEARTH_URL", "http://example.test:9/")
    monkeypatch.setenv("HEARTH_API_KEY", "from-env")
    with Hearth() as client:
        assert (client.config.url, client.config.key) == ("http://example.test:9", "from-env")
        assert "from-env" not in repr(client.config)
    monkeypatch.delenv("HEARTH_API_KEY")
    with pytest.raises(HearthConfigError):
        AsyncHearth()


def test_a_broken_stream_resumes_after_the_last_id_seen_and_repeats_nothing() -> None:
    client, seen = client_with(
        httpx.Response(200, json=VM),
        stream([STARTED, LINE1], broken=True),
        stream([LINE1, LINE2, EXIT]),  # a server resending an event it sent already
    )
    with client:
        events = list(client.vms.get("vm-1").exec_stream(["true"]))
    assert events == [
        ExecStarted(exec_id="x1", pid=7, id=0),
        ExecOutput(stream="stdout", data=b"one\n", id=1),
        ExecOutput(stream="stderr", data=b"two\n", id=2),
        ExecExit(code=0, signal=None, duration_ms=5, reason="exited", id=3),
    ]
    resume = seen[2]
    assert (resume.method, resume.url.path) == ("GET", "/api/vms/vm-1/exec/x1/events")
    assert resume.headers["Last-Event-ID"] == "1"


def test_an_error_event_a_502_and_an_early_end_are_breaks_too() -> None:
    upstream_lost = sse("error", {"code": "backend_error", "message": "agent gone"})
    client, seen = client_with(
        httpx.Response(200, json=VM),
        stream([STARTED, upstream_lost]),
        httpx.Response(502, json={"error": {"code": "backend_error", "message": "restarting"}}),
        stream([LINE1]),  # ends without an exit
        stream([EXIT]),
        policy=ResumePolicy(max_resumes=3, first_delay_s=0.0),
    )
    with client:
        result = client.vms.get("vm-1").exec(["true"])
    assert (result.stdout, result.exit_code) == (b"one\n", 0)
    assert [r.headers.get("Last-Event-ID") for r in seen[2:]] == ["0", "0", "1"]


def test_a_command_whose_stream_broke_before_started_still_names_its_id() -> None:
    # The id came in the first answer's header; the stream picked up after 0 never shows
    # ``started``.
    client, _ = client_with(
        httpx.Response(200, json=VM), stream([], broken=True), stream([LINE1, EXIT])
    )
    with client:
        result = client.vms.get("vm-1").exec(["true"])
    assert (result.exec_id, result.stdout) == ("x1", b"one\n")


def test_breaks_in_a_row_past_max_resumes_raise_and_a_404_is_not_retried() -> None:
    client, _ = client_with(
        httpx.Response(200, json=VM),
        stream([STARTED], broken=True),
        stream([], broken=True),
        stream([], broken=True),
    )
    with client, pytest.raises(HearthConnectionError) as broken:
        list(client.vms.get("vm-1").exec_stream(["true"]))
    assert broken.value.code == "stream_broken"
    gone = {"error": {"code": "not_found", "message": "no VM vm-1"}}
    client, seen = client_with(
        httpx.Response(200, json=VM), stream([STARTED], broken=True), httpx.Response(404, json=gone)
    )
    with client, pytest.raises(HearthApiError) as missing:
        list(client.vms.get("vm-1").exec_stream(["true"]))
    assert (missing.value.code, len(seen)) == ("not_found", 3)


# A transport error on a request that starts something: before it went out (nothing can have
# happened) or after (it may have: its answer was lost).
NO_ANSWER = [
    (httpx.ConnectError, "unreachable"),
    (httpx.ConnectTimeout, "unreachable"),
    (httpx.RemoteProtocolError, "outcome_unknown"),
    (httpx.ReadError, "outcome_unknown"),
    (httpx.ReadTimeout, "outcome_unknown"),
    (httpx.WriteError, "outcome_unknown"),
]


def failing_on(method: str, error: type[httpx.TransportError]) -> httpx.MockTransport:
    """A transport that answers the VM to every request but ``method``, which fails with
    ``error``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == method:
            raise error("no answer", request=request)
        return httpx.Response(200, json=VM)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("error", "code"), NO_ANSWER)
async def test_a_start_that_got_no_answer_is_unreachable_only_if_it_never_went_out(
    error: type[httpx.TransportError], code: str
) -> None:
    # "unreachable" tells a caller nothing ran: safe to send again. A request that went out
    # may have started the command (or paused the VM) before its answer was lost.
    with Hearth(URL, "k", transport=failing_on("POST", error)) as client:
        vm = client.vms.get("vm-1")
        with pytest.raises(HearthConnectionError) as started:
            vm.exec(["true"])
        with pytest.raises(HearthConnectionError) as paused:
            vm.pause()
    async with AsyncHearth(URL, "k", transport=failing_on("POST", error)) as aclient:
        avm = await aclient.vms.get("vm-1")
        with pytest.raises(HearthConnectionError) as astarted:
            await avm.exec(["true"])
        with pytest.raises(HearthConnectionError) as apaused:
            await avm.pause()
    assert [e.value.code for e in (started, paused, astarted, apaused)] == [code] * 4
    assert isinstance(started.value.__cause__, error)


@pytest.mark.parametrize("error", [error for error, _ in NO_ANSWER])
def test_a_read_that_got_no_answer_is_unreachable_whatever_broke(
    error: type[httpx.TransportError],
) -> None:
    # A GET changes nothing: sending it again is always safe.
    client = Hearth(URL, "k", transport=failing_on("GET", error))
    with client, pytest.raises(HearthConnectionError) as listed:
        client.vms.list()
    assert listed.value.code == "unreachable"


async def test_run_stream_starts_the_run_when_the_iteration_begins_in_both_clients() -> None:
    run = {"id": "r1", "vmId": "vm-1", "provider": "claude_code", "status": "running"}
    ended = sse("run.completed", {"sessionId": "s1", "usage": {}}, 1)

    def answers() -> list[httpx.Response]:
        return [
            httpx.Response(200, json=VM),
            httpx.Response(202, json=run),
            httpx.Response(200, headers={"content-type": "text/event-stream"}, content=ended),
        ]

    transport, seen = scripted(*answers())
    with Hearth(URL, "k", transport=transport) as client:
        events = client.vms.get("vm-1").run_stream("claude_code", "hi")
        assert [r.method for r in seen] == ["GET"]
        assert [e.type for e in events] == ["run.completed"]
    assert [r.url.path for r in seen[1:]] == ["/api/vms/vm-1/runs", "/api/vms/vm-1/runs/r1/events"]
    transport, seen = scripted(*answers())
    async with AsyncHearth(URL, "k", transport=transport) as aclient:
        aevents = (await aclient.vms.get("vm-1")).run_stream("claude_code", "hi")
        assert [r.method for r in seen] == ["GET"]
        assert [e.type async for e in aevents] == ["run.completed"]
    assert [r.url.path for r in seen[1:]] == ["/api/vms/vm-1/runs", "/api/vms/vm-1/runs/r1/events"]


def test_a_deadline_pauses_at_most_its_interval_then_times_out() -> None:
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    deadline = Deadline("thing", timeout_s=1.0, interval_s=0.4, clock=clock)
    assert deadline.next_pause_s() == 0.4
    now[0] = 0.9
    assert deadline.next_pause_s() == pytest.approx(0.1)
    now[0] = 1.0
    with pytest.raises(WaitTimeout, match="thing"):
        deadline.next_pause_s()


def test_the_default_resume_policy_outlasts_a_controller_restart() -> None:
    # A stopping controller ends its streams at once; its successor needs some seconds to listen.
    waited = sum(DEFAULT_RESUME.delay_s(n) for n in range(1, DEFAULT_RESUME.max_resumes + 1))
    assert 25.0 <= waited <= 30.0

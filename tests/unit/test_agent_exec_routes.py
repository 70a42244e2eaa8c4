"""The exec endpoints' wire format: the SSE framing, the resume point, and body parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth_agent.errors import InvalidInput
from hearth_agent.exec_events import EventType, ExecEvent
from hearth_agent.exec_routes import parse_exec_spec, resume_point, sse_event
from hearth_agent.routing import Request


def get(query: dict[str, list[str]], headers: dict[str, str] | None = None) -> Request:
    """A GET request with the given query and (lower-case) headers."""
    return Request(
        method="GET",
        path="/exec/x/events",
        query=query,
        authorization=None,
        read_body=lambda: b"",
        headers=headers or {},
    )


def test_an_event_is_framed_as_id_event_and_one_line_of_json() -> None:
    event = ExecEvent(id=7, type=EventType.STDOUT, payload={"data": "a\nb"}, size=0)

    assert sse_event(event) == b'id: 7\nevent: stdout\ndata: {"data":"a\\nb"}\n\n'


def test_the_exit_event_carries_code_signal_duration_and_reason() -> None:
    payload: dict[str, object] = {
        "code": None,
        "signal": "SIGKILL",
        "duration_ms": 12,
        "reason": "timeout",
    }
    event = ExecEvent(id=3, type=EventType.EXIT, payload=payload, size=0)

    assert sse_event(event) == (
        b'id: 3\nevent: exit\ndata: {"code":null,"signal":"SIGKILL","duration_ms":12,'
        b'"reason":"timeout"}\n\n'
    )


def test_last_event_id_wins_over_after_and_the_default_is_zero() -> None:
    assert resume_point(get({})) == 0
    assert resume_point(get({"after": ["5"]})) == 5
    assert resume_point(get({"after": ["5"]}, {"last-event-id": " 9 "})) == 9


@pytest.mark.parametrize("value", ["-1", "1.5", "", "9" * 19])
def test_a_resume_point_that_is_not_an_event_id_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="after"):
        resume_point(get({"after": [value]}))


def test_a_full_body_becomes_a_spec() -> None:
    spec = parse_exec_spec(
        {
            "cmd": ["sh", "-c", "cat"],
            "env": {"A": "1"},
            "cwd": "proj",
            "stdin": "hi €",
            "stdin_open": True,
            "timeout_s": 2.5,
        }
    )

    assert spec.cmd == ("sh", "-c", "cat")
    assert spec.env == {"A": "1"}
    assert spec.cwd == Path("proj")
    assert spec.stdin == "hi €".encode()
    assert spec.stdin_open is True
    assert spec.timeout_s == 2.5


def test_a_minimal_body_leaves_the_defaults_to_the_registry() -> None:
    spec = parse_exec_spec({"cmd": ["true"]})

    assert (spec.env, spec.cwd, spec.stdin, spec.stdin_open, spec.timeout_s) == (
        {},
        None,
        None,
        False,
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"cmd": ["a\0b"]},
        {"cmd": ["ls"], "env": {"A=B": "1"}},
        {"cmd": ["ls"], "env": {"A": "1\0"}},
        {"cmd": ["ls"], "timeout_s": True},
        {"cmd": ["ls"], "timeout_s": float("nan")},
        {"cmd": ["ls"], "cwd": ""},
    ],
)
def test_bodies_a_process_could_not_take_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        parse_exec_spec(body)

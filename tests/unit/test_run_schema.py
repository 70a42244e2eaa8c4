"""The run routes' wire schema takes the model names and session ids the command line takes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hearth.api.app import create_app
from hearth.api.schemas_run import RunCreate
from hearth.config import Settings
from hearth.errors import InvalidInput
from hearth.runs import run_command
from hearth.runs.commands import MODEL_PATTERN, SESSION_ID_PATTERN
from hearth_agent.wire import Provider

SID = "0f93dd13-19d3-4113-bc2b-24c9669101f2"
# Names the CLIs use, names at and past the lengths either side allowed, and argv tricks.
NAMES = [
    *("opus", "claude-sonnet-4-5[1m]", "us.anthropic/x:1", "a@b", "a:b", SID),
    *("x" * 128, "x" * 200, "x" * 201, "x" * 256),
    *("-x", "--last", "a b", "m\n", "", "$(id)", "a;b", "../x"),
]


def _api_takes(**fields: Any) -> bool:
    try:
        RunCreate.model_validate({"provider": "claude_code", "prompt": "hi", **fields})
    except ValidationError:
        return False
    return True


def _command_takes(**fields: Any) -> bool:
    try:
        run_command(Provider.CLAUDE_CODE, prompt="hi", **fields)
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_the_api_takes_the_models_the_command_line_takes_and_no_other(name: str) -> None:
    # The API refused "claude-sonnet-4-5[1m]" and names of 129 to 200 characters.
    assert _api_takes(model=name) is _command_takes(model=name)


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_the_api_takes_the_session_ids_the_command_line_takes_and_no_other(name: str) -> None:
    # The API took "a:b" and ids of 201 to 256 characters, which the run then refused.
    assert _api_takes(resume=name) is _command_takes(resume=name)


def test_the_openapi_document_gives_both_patterns() -> None:
    document = create_app(Settings.from_env({"HEARTH_STATE_DIR": "/nonexistent"})).openapi()
    fields = document["components"]["schemas"]["RunCreate"]["properties"]
    patterns = {
        name: [t.get("pattern") for t in fields[name]["anyOf"]] for name in ("model", "resume")
    }
    assert patterns["model"] == [MODEL_PATTERN, None]
    assert patterns["resume"] == [SESSION_ID_PATTERN, None]

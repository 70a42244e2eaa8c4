"""Wire schemas of the run routes (``/api/vms/{id}/runs``), camelCase like the rest."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import Field, StrictStr

from hearth.api.schemas import RequestModel, WireModel
from hearth.api.schemas_exec import MAX_TIMEOUT_S
from hearth.control.runs import RunRequest
from hearth.runs.commands import MODEL_PATTERN, SESSION_ID_PATTERN
from hearth.store.records import RunRecord
from hearth_agent.wire import Provider

RUN_EVENTS = (
    "events, one schema for every CLI: `run.started`, `message.delta` {text}, `tool.started` "
    "{toolId, name, input}, `tool.finished` {toolId, name, output?, isError}, `usage`, `raw` "
    "(what a CLI printed that maps to none of these), and last one `run.completed` {usage, "
    "sessionId} or `run.failed` {code, message} (code: not_logged_in, provider_unreachable, "
    "rate_limited, timeout, cancelled, cli_crashed); each with an `id:` that Last-Event-ID "
    "resumes after"
)


class RunCreate(RequestModel):
    """``POST /api/vms/{id}/runs``: a prompt for one provider's CLI, in its headless mode."""

    provider: Provider = Field(description="whose CLI runs; its login must be in this VM")
    # The size cap is the controller's (HEARTH_RUN_PROMPT_MAX_BYTES, 413 past it).
    prompt: Annotated[StrictStr, Field(min_length=1)]
    cwd: Annotated[StrictStr, Field(min_length=1, max_length=4096)] | None = None
    # The command line's own patterns (which also cap the length): a name the API takes is one
    # a run takes.
    model: (
        Annotated[
            StrictStr,
            Field(
                pattern=MODEL_PATTERN,
                description="the CLI's model name or alias, e.g. `claude-sonnet-4-5[1m]`",
            ),
        ]
        | None
    ) = None
    resume: (
        Annotated[
            StrictStr,
            Field(
                pattern=SESSION_ID_PATTERN,
                description="the CLI's own session id (a run's `sessionId`) to continue",
            ),
        ]
        | None
    ) = None
    timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] | None = Field(
        default=None, description="fail the run with `timeout` (and end the CLI) after this long"
    )

    def request(self) -> RunRequest:
        """What the service runs."""
        return RunRequest(
            provider=self.provider,
            prompt=self.prompt,
            cwd=self.cwd,
            model=self.model,
            resume=self.resume,
            timeout_s=self.timeout_s,
        )


class RunFailureOut(WireModel):
    """Why a run failed."""

    code: str
    message: str | None


class RunOut(WireModel):
    """A run: who, which provider, where it is, the CLI's session id, usage, how it ended."""

    id: str
    vm_id: str
    user_id: str
    provider: str
    status: str
    model: str | None
    resume: str | None
    session_id: str | None
    usage: dict[str, Any] | None
    exit_code: int | None
    exit_signal: int | None
    failure: RunFailureOut | None
    last_event_id: int
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, run: RunRecord) -> Self:
        """The run as stored, on the wire."""
        failure = (
            RunFailureOut(code=run.failure_code, message=run.error_message)
            if run.failure_code
            else None
        )
        usage = json.loads(run.usage) if run.usage else None
        return cls.of_record(run, usage=usage, failure=failure)


class RunList(WireModel):
    """``GET /api/vms/{id}/runs``: the VM's runs, newest first."""

    runs: list[RunOut]

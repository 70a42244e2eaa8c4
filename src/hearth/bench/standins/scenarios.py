"""What a stand-in answers to a model request: a ``Scenario`` per request, from a ``Script``."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class Scenario(StrEnum):
    """How the stand-in answers one model request, in the provider's own wire format."""

    ANSWER = "answer"  # a streamed text answer, ended normally, with token usage
    TOOL_CALL = "tool_call"  # the model calls a tool; the request carrying its result is answered
    RATE_LIMITED = "rate_limited"  # the provider's 429: its error body and rate-limit headers
    UNAUTHORIZED = "unauthorized"  # the provider's 401, whatever bearer came
    DROPPED = "dropped"  # the stream starts, then the connection is cut without an end


@dataclass(frozen=True)
class Usage:
    """The token counts a finished answer reports."""

    input_tokens: int = 21
    output_tokens: int = 9
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output, as providers that report a total count it."""
        return self.input_tokens + self.output_tokens


@dataclass
class Script:
    """The stand-in's plan for model requests: ``scenario`` for each, unless ``queue`` holds one.

    ``queue`` is consumed one scenario per model request (a CLI's retries consume it too); when
    it is empty, ``scenario`` answers. ``chunk_delay`` (seconds) is slept before each streamed
    event after the first, so a test can cancel a run mid-stream. ``retry_after`` is what a
    429 tells the client to wait, in seconds.
    """

    scenario: Scenario = Scenario.ANSWER
    text: str = "Hello from the stand-in. The answer is 42."
    tool_text: str = "I looked at the directory."
    usage: Usage = field(default_factory=Usage)
    chunk_delay: float = 0.0
    retry_after: int = 3600
    queue: deque[Scenario] = field(default_factory=deque)

    def then(self, scenarios: Iterable[Scenario]) -> Script:
        """Queue ``scenarios`` for the next model requests, in order; returns the script."""
        self.queue.extend(Scenario(s) for s in scenarios)
        return self

    def peek(self) -> Scenario:
        """The scenario the next model request will get, without using it up."""
        return self.queue[0] if self.queue else self.scenario

    def next_scenario(self) -> Scenario:
        """The scenario of the model request being answered now."""
        return self.queue.popleft() if self.queue else self.scenario


def text_chunks(text: str) -> list[str]:
    """``text`` cut into word-sized pieces (each keeps its trailing space), as models stream."""
    return re.findall(r"\S+\s*|\s+", text) or [text]

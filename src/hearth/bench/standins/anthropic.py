"""``AnthropicStandIn``: the Anthropic API as Claude Code uses it under a claude.ai login.

Claude Code 2.1.332 run headless (``claude -p``) with an OAuth credential calls, on
``api.anthropic.com``: ``GET /api/oauth/profile`` (account and organization; a failure is logged
and the run goes on) and ``POST /v1/messages?beta=true`` with ``stream: true`` (the Messages
API's server-sent events). When the access token is refused it refreshes at
``platform.claude.com/v1/oauth/token``; this stand-in refuses that refresh as the real server
refuses an unknown refresh token. Everything else gets the API's 404 body.

Errors are the API's ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with a
``request-id`` header. A 429 is a subscription's used-up five-hour allowance: the
``anthropic-ratelimit-unified-*`` headers (status ``rejected``, reset, representative claim)
are what Claude Code reads to say "You've hit your 5-hour limit · resets ...".
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Sequence

from starlette.responses import JSONResponse, Response

from hearth.bench.standins.recording import RecordedRequest
from hearth.bench.standins.scenarios import Scenario, text_chunks
from hearth.bench.standins.standin import (
    Endpoint,
    ProviderStandIn,
    SseEvent,
    cut_point,
    oauth_error,
)

# The tool the ``tool_call`` scenario asks for. This build offers no Glob/LS tool; ``ls`` is a
# read-only command, which ``claude -p`` lets Bash run without a permission prompt, and its
# events (an assistant tool_use, then a user tool_result) show in stream-json.
TOOL_NAME = "Bash"
TOOL_INPUT: dict[str, object] = {"command": "ls", "description": "List files"}

_BASE62 = string.ascii_letters + string.digits


def _id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_BASE62) for _ in range(24))


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    request_id = _id("req_011C")
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id},
        status_code=status,
        headers={"request-id": request_id, **(headers or {})},
    )


def _is_tool_result_turn(body: object) -> bool:
    """Whether the last message of a Messages request carries a tool's result."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return False
    last = messages[-1]
    content = last.get("content") if isinstance(last, dict) else None
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )


class AnthropicStandIn(ProviderStandIn):
    """``api.anthropic.com`` (and the token endpoint on ``platform.claude.com``)."""

    hosts = ("api.anthropic.com", "platform.claude.com")
    tool_name = TOOL_NAME
    tool_input = TOOL_INPUT

    def endpoints(self) -> Sequence[Endpoint]:
        """The Messages API, the OAuth profile, and the token refresh."""
        return [
            Endpoint("/v1/messages", ("POST",), self.messages),
            Endpoint("/api/oauth/profile", ("GET",), self.profile),
            Endpoint("/v1/oauth/token", ("POST",), self.refresh, bearer=False),
        ]

    def is_model_request(self, request: RecordedRequest) -> bool:
        """``POST /v1/messages``."""
        return request.method == "POST" and request.path == "/v1/messages"

    def unauthorized(self, request: RecordedRequest) -> Response:
        """The 401 the API gives a bearer it does not know."""
        return _error(401, "authentication_error", "Invalid bearer token")

    def not_found(self, request: RecordedRequest) -> Response:
        """The API's 404."""
        return _error(404, "not_found_error", "Not Found")

    def rate_limited(self) -> Response:
        """The 429 of a subscription whose five-hour allowance is used up."""
        reset = int(time.time()) + self.script.retry_after
        return _error(
            429,
            "rate_limit_error",
            "This request would exceed your account's rate limit. Please try again later.",
            {
                "retry-after": str(self.script.retry_after),
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": str(reset),
                "anthropic-ratelimit-unified-representative-claim": "five_hour",
                "anthropic-ratelimit-unified-5h-status": "rejected",
                "anthropic-ratelimit-unified-5h-reset": str(reset),
                "anthropic-ratelimit-unified-5h-utilization": "1.0",
                "anthropic-ratelimit-unified-overage-status": "rejected",
                "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
                "x-should-retry": "false",
            },
        )

    async def refresh(self, request: RecordedRequest) -> Response:
        """Refuse the refresh token, as the real endpoint refuses one it never issued."""
        return oauth_error("invalid_grant", "Invalid refresh token")

    async def profile(self, request: RecordedRequest) -> Response:
        """A Max subscriber's account and organization."""
        return JSONResponse(
            {
                "account": {
                    "uuid": "5f0a1c2e-0000-4000-8000-000000000001",
                    "email": "user@example.test",
                    "full_name": "Test User",
                    "display_name": "Test",
                    "has_claude_max": True,
                    "has_claude_pro": False,
                },
                "organization": {
                    "uuid": "5f0a1c2e-0000-4000-8000-000000000002",
                    "name": "Test Org",
                    "organization_type": "claude_max",
                    "billing_type": "stripe_subscription",
                    "rate_limit_tier": "default_claude_max_20x",
                },
            },
            headers={"request-id": _id("req_011C")},
        )

    async def messages(self, request: RecordedRequest) -> Response:
        """Answer one Messages request as the script says."""
        body = request.json()
        scenario = self.script.next_scenario()
        if scenario is Scenario.UNAUTHORIZED:
            return self.unauthorized(request)
        if scenario is Scenario.RATE_LIMITED:
            return self.rate_limited()
        model = body.get("model", "claude-test") if isinstance(body, dict) else "claude-test"
        if scenario is Scenario.TOOL_CALL and not _is_tool_result_turn(body):
            return self.sse(self._tool_call_events(model), headers=self._stream_headers())
        text = self.script.tool_text if scenario is Scenario.TOOL_CALL else self.script.text
        events = self._answer_events(model, text)
        cut_after = cut_point(scenario, len(events))
        return self.sse(events, cut_after=cut_after, headers=self._stream_headers())

    @staticmethod
    def _stream_headers() -> dict[str, str]:
        return {"request-id": _id("req_011C"), "anthropic-ratelimit-unified-status": "allowed"}

    def _message_start(self, model: str) -> SseEvent:
        usage = self.script.usage
        return SseEvent(
            {
                "type": "message_start",
                "message": {
                    "id": _id("msg_01"),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": usage.input_tokens,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": usage.cached_input_tokens,
                        "output_tokens": 1,
                        "service_tier": "standard",
                    },
                },
            },
            "message_start",
        )

    def _message_end(self, stop_reason: str) -> list[SseEvent]:
        usage = self.script.usage
        return [
            SseEvent(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {
                        "input_tokens": usage.input_tokens,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": usage.cached_input_tokens,
                        "output_tokens": usage.output_tokens,
                    },
                },
                "message_delta",
            ),
            SseEvent({"type": "message_stop"}, "message_stop"),
        ]

    def _answer_events(self, model: str, text: str) -> list[SseEvent]:
        deltas = [
            SseEvent(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": chunk},
                },
                "content_block_delta",
            )
            for chunk in text_chunks(text)
        ]
        return [
            self._message_start(model),
            SseEvent(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            ),
            SseEvent({"type": "ping"}, "ping"),
            *deltas,
            SseEvent({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            *self._message_end("end_turn"),
        ]

    def _tool_call_events(self, model: str) -> list[SseEvent]:
        arguments = json.dumps(self.tool_input)
        half = len(arguments) // 2
        return [
            self._message_start(model),
            SseEvent(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {
                        "type": "tool_use",
                        "id": _id("toolu_01"),
                        "name": self.tool_name,
                        "input": {},
                    },
                },
                "content_block_start",
            ),
            *(
                SseEvent(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    },
                    "content_block_delta",
                )
                for part in (arguments[:half], arguments[half:])
            ),
            SseEvent({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            *self._message_end("tool_use"),
        ]

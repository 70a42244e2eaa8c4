"""``OpenAIStandIn``: ChatGPT's Codex backend as ``codex exec`` uses it under a ChatGPT login.

codex 0.171.0 with ``auth_mode: chatgpt`` talks to ``chatgpt.com/backend-api``. What a headless
``codex exec --json`` needs answered: ``GET /wham/accounts/check`` (workspace routing: without
the signed-in account, listed with its backend origin, the turn fails with "workspace routing
discovery failed") and the Responses API at ``/codex/responses``. codex asks for that first as a
WebSocket (one ``response.create`` text message per request, the stream's events back as text
messages, an error wrapped as ``{"type": "error", "status_code", "error", "headers"}``; a
``generate: false`` request only warms the socket up) and, after five failed attempts, as an
HTTPS POST answered with server-sent events; the stand-in serves both. The POST body comes
zstd-compressed (``Content-Encoding: zstd``). ``GET /codex/models`` gets an empty list (codex
keeps its built-in default). Plugins (``/ps/...``), user settings and analytics get the
backend's 404 and codex goes on. A refused access token makes codex refresh at
``auth.openai.com/oauth/token``, which this stand-in refuses as the real one refuses a refresh
token it never issued. A 429 is a ChatGPT plan's used-up Codex limit: ``usage_limit_reached``
with the plan and reset, and the ``x-codex-primary-*``/``x-codex-secondary-*`` headers.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Sequence

from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from hearth.bench.standins.recording import RecordedRequest
from hearth.bench.standins.scenarios import Scenario, text_chunks
from hearth.bench.standins.standin import (
    Endpoint,
    ProviderStandIn,
    SocketEndpoint,
    SseEvent,
    cut_point,
)

# The tool the ``tool_call`` scenario calls. codex 0.171 offers the model one freeform tool,
# ``exec`` (JavaScript run in a V8 isolate, which reaches codex's own tools through ``tools.*``);
# the script lists the working directory with the read-only ``exec_command``, which codex exec
# runs in its read-only sandbox without asking.
TOOL_NAME = "exec"
TOOL_INPUT = 'text(await tools.exec_command({cmd: "ls"}));'

BACKEND = "/backend-api"


def _hex_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


def _request_headers() -> dict[str, str]:
    return {"x-request-id": str(uuid.uuid4()), "cf-ray": f"{secrets.token_hex(8)}-SJC"}


def _is_tool_result_turn(body: object) -> bool:
    """Whether the last input item of a Responses request is a tool's output."""
    items = body.get("input") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return False
    last = items[-1]
    return isinstance(last, dict) and last.get("type") in {
        "function_call_output",
        "custom_tool_call_output",
    }


class OpenAIStandIn(ProviderStandIn):
    """``chatgpt.com`` (the Codex backend) and ``auth.openai.com`` (the token refresh)."""

    hosts = ("chatgpt.com", "auth.openai.com")
    tool_name = TOOL_NAME
    tool_input = TOOL_INPUT
    plan_type = "plus"

    def endpoints(self) -> Sequence[Endpoint]:
        """Responses, workspace routing, the model list, and the token refresh."""
        return [
            Endpoint(f"{BACKEND}/codex/responses", ("POST",), self.responses),
            Endpoint(f"{BACKEND}/wham/accounts/check", ("GET",), self.accounts_check),
            Endpoint(f"{BACKEND}/codex/models", ("GET",), self.models),
            Endpoint("/oauth/token", ("POST",), self.refresh, bearer=False),
        ]

    def socket_endpoints(self) -> Sequence[SocketEndpoint]:
        """The Responses WebSocket."""
        return [SocketEndpoint(f"{BACKEND}/codex/responses", self.responses_socket)]

    def is_model_request(self, request: RecordedRequest) -> bool:
        """A ``POST /backend-api/codex/responses``, or a ``response.create`` on its socket."""
        if request.path != f"{BACKEND}/codex/responses":
            return False
        body = request.json() if request.method in ("POST", "WEBSOCKET") else None
        if not isinstance(body, dict) or body.get("generate") is False:
            return False
        return request.method == "POST" or body.get("type") == "response.create"

    def unauthorized(self, request: RecordedRequest) -> Response:
        """The backend's 401 for a token it does not accept."""
        return JSONResponse({"detail": "Unauthorized"}, status_code=401, headers=_request_headers())

    def not_found(self, request: RecordedRequest) -> Response:
        """The backend's 404."""
        return JSONResponse({"detail": "Not Found"}, status_code=404, headers=_request_headers())

    def rate_limited(self) -> Response:
        """The 429 of a ChatGPT plan whose Codex usage limit is reached."""
        now = int(time.time())
        reset = now + self.script.retry_after
        return JSONResponse(
            {
                "error": {
                    "type": "usage_limit_reached",
                    "message": "The usage limit has been reached",
                    "plan_type": self.plan_type,
                    "resets_at": reset,
                    "resets_in_seconds": self.script.retry_after,
                }
            },
            status_code=429,
            headers={
                **_request_headers(),
                "x-codex-primary-used-percent": "100.0",
                "x-codex-primary-window-minutes": "300",
                "x-codex-primary-reset-at": str(reset),
                "x-codex-secondary-used-percent": "41.0",
                "x-codex-secondary-window-minutes": "10080",
                "x-codex-secondary-reset-at": str(now + 5 * 24 * 3600),
            },
        )

    async def refresh(self, request: RecordedRequest) -> Response:
        """Refuse the refresh token, as the real endpoint refuses one it never issued."""
        return JSONResponse(
            {
                "error": {
                    "message": "Your refresh token has been invalidated. Please sign in again.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "refresh_token_invalidated",
                }
            },
            status_code=401,
        )

    async def accounts_check(self, request: RecordedRequest) -> Response:
        """The signed-in account (``chatgpt-account-id``) routed to chatgpt.com."""
        account = request.headers.get("chatgpt-account-id") or "acct-standin"
        return JSONResponse(
            {
                "accounts": [
                    {
                        "id": account,
                        "name": None,
                        "profile_picture_url": None,
                        "structure": "personal",
                        "plan_type": self.plan_type,
                        "workspace_backend_origin": "https://chatgpt.com",
                        "account_routing_override": "NO_CONSTRAINT",
                    }
                ],
                "account_ordering": [account],
                "default_account_id": account,
            },
            headers=_request_headers(),
        )

    async def models(self, request: RecordedRequest) -> Response:
        """No remote model list: codex keeps the models it ships with."""
        return JSONResponse({"models": []}, headers=_request_headers())

    async def responses(self, request: RecordedRequest) -> Response:
        """Answer one Responses request over HTTPS (server-sent events) as the script says."""
        scenario = self.script.next_scenario()
        if scenario is Scenario.UNAUTHORIZED:
            return self.unauthorized(request)
        if scenario is Scenario.RATE_LIMITED:
            return self.rate_limited()
        events = self._events(scenario, request.json())
        return self.sse(
            events, cut_after=cut_point(scenario, len(events)), headers=_request_headers()
        )

    async def responses_socket(self, websocket: WebSocket, handshake: RecordedRequest) -> None:
        """The same over a WebSocket, codex's first choice: one ``response.create`` message per
        request, the stream's events back as text messages, errors wrapped in an ``error``
        event. A scripted 401 refuses the handshake, as a refused token is refused there."""
        if self.script.peek() is Scenario.UNAUTHORIZED:
            self.script.next_scenario()
            await websocket.send_denial_response(self.unauthorized(handshake))
            return
        await websocket.accept(
            headers=[(k.encode(), v.encode()) for k, v in _request_headers().items()]
        )
        try:
            while True:
                message = self.record(handshake.message(await websocket.receive_text()))
                body = message.json()
                if not isinstance(body, dict) or body.get("type") != "response.create":
                    continue
                if body.get("generate") is False:
                    for event in self._prewarm_events(str(body.get("model"))):
                        await websocket.send_text(json.dumps(event.data))
                    continue
                scenario = self.script.next_scenario()
                if scenario in (Scenario.UNAUTHORIZED, Scenario.RATE_LIMITED):
                    await websocket.send_text(json.dumps(self._wrapped_error(scenario)))
                    continue
                events = self._events(scenario, body)
                async for event in self.paced(events, cut_after=cut_point(scenario, len(events))):
                    await websocket.send_text(json.dumps(event.data))
        except WebSocketDisconnect:
            return

    def _wrapped_error(self, scenario: Scenario) -> dict[str, object]:
        """An HTTP error as the WebSocket carries it: status, error body, headers."""
        response = self.rate_limited() if scenario is Scenario.RATE_LIMITED else None
        if response is None:
            return {"type": "error", "status_code": 401, "error": {"message": "Unauthorized"}}
        return {
            "type": "error",
            "status_code": response.status_code,
            "error": json.loads(bytes(response.body))["error"],
            "headers": {k: v for k, v in response.headers.items() if k.startswith("x-codex-")},
        }

    def _events(self, scenario: Scenario, body: object) -> list[SseEvent]:
        model = body.get("model", "gpt-test") if isinstance(body, dict) else "gpt-test"
        if scenario is Scenario.TOOL_CALL and not _is_tool_result_turn(body):
            return self._tool_call_events(model)
        text = self.script.tool_text if scenario is Scenario.TOOL_CALL else self.script.text
        return self._answer_events(model, text)

    # -- the event stream --------------------------------------------------------------------

    def _response(
        self, response_id: str, model: str, status: str, output: list[object]
    ) -> dict[str, object]:
        usage = self.script.usage
        body: dict[str, object] = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": model,
            "output": output,
        }
        if status == "completed":
            body["usage"] = {
                "input_tokens": usage.input_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
                "output_tokens": usage.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.total_tokens,
            }
        return body

    def _answer_events(self, model: str, text: str) -> list[SseEvent]:
        response_id = _hex_id("resp_")
        item_id = _hex_id("msg_")
        message_item: dict[str, object] = {
            "id": item_id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        part = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events: list[tuple[str, dict[str, object]]] = [
            (
                "response.created",
                {"response": self._response(response_id, model, "in_progress", [])},
            ),
            (
                "response.in_progress",
                {"response": self._response(response_id, model, "in_progress", [])},
            ),
            (
                "response.output_item.added",
                {
                    "output_index": 0,
                    "item": {**message_item, "status": "in_progress", "content": []},
                },
            ),
            (
                "response.content_part.added",
                {**part, "part": {"type": "output_text", "text": "", "annotations": []}},
            ),
            *(
                ("response.output_text.delta", {**part, "delta": chunk})
                for chunk in text_chunks(text)
            ),
            ("response.output_text.done", {**part, "text": text}),
            (
                "response.content_part.done",
                {**part, "part": {"type": "output_text", "text": text, "annotations": []}},
            ),
            ("response.output_item.done", {"output_index": 0, "item": message_item}),
            (
                "response.completed",
                {"response": self._response(response_id, model, "completed", [message_item])},
            ),
        ]
        return _numbered(events)

    def _tool_call_events(self, model: str) -> list[SseEvent]:
        response_id = _hex_id("resp_")
        call: dict[str, object] = {
            "id": _hex_id("ctc_"),
            "type": "custom_tool_call",
            "status": "completed",
            "call_id": "call_" + secrets.token_urlsafe(18),
            "name": self.tool_name,
            "input": self.tool_input,
        }
        part = {"item_id": call["id"], "output_index": 0}
        events: list[tuple[str, dict[str, object]]] = [
            (
                "response.created",
                {"response": self._response(response_id, model, "in_progress", [])},
            ),
            (
                "response.output_item.added",
                {"output_index": 0, "item": {**call, "status": "in_progress", "input": ""}},
            ),
            ("response.custom_tool_call_input.delta", {**part, "delta": self.tool_input}),
            ("response.custom_tool_call_input.done", {**part, "input": self.tool_input}),
            ("response.output_item.done", {"output_index": 0, "item": call}),
            (
                "response.completed",
                {"response": self._response(response_id, model, "completed", [call])},
            ),
        ]
        return _numbered(events)

    def _prewarm_events(self, model: str) -> list[SseEvent]:
        """The answer to ``generate: false`` (codex warms a new socket with one): a response
        that is created and completed with no output."""
        response_id = _hex_id("resp_")
        return _numbered(
            [
                (
                    "response.created",
                    {"response": self._response(response_id, model, "in_progress", [])},
                ),
                (
                    "response.completed",
                    {"response": self._response(response_id, model, "completed", [])},
                ),
            ]
        )


def _numbered(events: list[tuple[str, dict[str, object]]]) -> list[SseEvent]:
    """Events with their ``type`` and ``sequence_number``, as the Responses API sends them."""
    return [
        SseEvent({"type": kind, "sequence_number": n, **payload}, kind)
        for n, (kind, payload) in enumerate(events)
    ]

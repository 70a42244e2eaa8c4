"""``GeminiStandIn``: Google's Code Assist API as Gemini CLI uses it under a Google login.

gemini-cli 0.61.0 with ``oauth-personal`` credentials first checks the cached access token at
``oauth2.googleapis.com/tokeninfo`` (a refused token makes a headless run fail: it would need a
browser login), then calls ``cloudcode-pa.googleapis.com/v1internal``: ``:loadCodeAssist`` (the
user's tier and Code Assist project), ``:listExperiments``, ``:retrieveUserQuota``,
``:fetchAdminControls``, and for the answer ``:streamGenerateContent?alt=sse`` (server-sent
``GenerateContentResponse`` chunks wrapped in ``{"response": ..., "traceId": ...}``). Its
metrics (``:recordCodeAssistMetrics``) are accepted and dropped. A refused access token makes
it refresh at ``oauth2.googleapis.com/token``, which this stand-in refuses as Google refuses a
refresh token it never issued.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence

from starlette.responses import JSONResponse, Response

from hearth.bench.standins.recording import RecordedRequest
from hearth.bench.standins.scenarios import Scenario, Usage, text_chunks
from hearth.bench.standins.standin import (
    Endpoint,
    ProviderStandIn,
    SseEvent,
    cut_point,
    oauth_error,
)

# The tool the ``tool_call`` scenario calls: read-only, so ``gemini -p`` runs it without asking
# (tools that need a confirmation are not offered in a non-interactive run).
TOOL_NAME = "list_directory"
TOOL_ARGS: dict[str, object] = {"dir_path": "."}

API = "/v1internal"
SIDE_CALL_USAGE = Usage(input_tokens=7, output_tokens=2)  # what a router call reports
PROJECT = "standin-project-4242"


def _google_error(
    status: int, code: str, message: str, details: list[object] | None = None
) -> dict[str, object]:
    error: dict[str, object] = {"code": status, "message": message, "status": code}
    if details:
        error["details"] = details
    return {"error": error}


def _is_tool_result_turn(body: object) -> bool:
    """Whether the last content of a generate request carries a function's response."""
    request = body.get("request") if isinstance(body, dict) else None
    contents = request.get("contents") if isinstance(request, dict) else None
    if not isinstance(contents, list) or not contents:
        return False
    parts = contents[-1].get("parts") if isinstance(contents[-1], dict) else None
    return isinstance(parts, list) and any(
        isinstance(part, dict) and "functionResponse" in part for part in parts
    )


def _satisfy(schema: dict[str, object]) -> object:
    """The plainest value of a (Gemini-flavoured) JSON schema: an enum's first member."""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = str(schema.get("type", "string")).lower()
    if kind == "object":
        properties = schema.get("properties")
        items = properties.items() if isinstance(properties, dict) else ()
        return {name: _satisfy(sub) for name, sub in items if isinstance(sub, dict)}
    plain: dict[str, object] = {"array": [], "boolean": False, "number": 0, "integer": 0}
    return plain.get(kind, "stand-in")


class GeminiStandIn(ProviderStandIn):
    """``cloudcode-pa.googleapis.com`` and ``oauth2.googleapis.com``."""

    hosts = ("cloudcode-pa.googleapis.com", "oauth2.googleapis.com")
    tool_name = TOOL_NAME
    tool_args = TOOL_ARGS

    def endpoints(self) -> Sequence[Endpoint]:
        """Code Assist's methods and the two OAuth endpoints the CLI calls."""
        methods = {
            "loadCodeAssist": self.load_code_assist,
            "onboardUser": self.onboard_user,
            "listExperiments": self.list_experiments,
            "retrieveUserQuota": self.retrieve_user_quota,
            "fetchAdminControls": self.empty,
            "recordCodeAssistMetrics": self.empty,
            "countTokens": self.count_tokens,
            "generateContent": self.generate_content,
            "streamGenerateContent": self.stream_generate_content,
        }
        return [
            *(Endpoint(f"{API}:{name}", ("POST",), handler) for name, handler in methods.items()),
            Endpoint("/tokeninfo", ("POST", "GET"), self.tokeninfo, bearer=False),
            Endpoint("/token", ("POST",), self.refresh, bearer=False),
        ]

    def is_model_request(self, request: RecordedRequest) -> bool:
        """``POST /v1internal:streamGenerateContent``."""
        return request.method == "POST" and request.path == f"{API}:streamGenerateContent"

    def unauthorized(self, request: RecordedRequest) -> Response:
        """Google's 401 for a token it does not accept."""
        return JSONResponse(
            _google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.",
            ),
            status_code=401,
            headers={
                "www-authenticate": 'Bearer realm="https://accounts.google.com/", '
                'error="invalid_token"'
            },
        )

    def not_found(self, request: RecordedRequest) -> Response:
        """Google's 404."""
        return JSONResponse(
            _google_error(404, "NOT_FOUND", "Requested entity was not found."), status_code=404
        )

    def rate_limited(self, model: str) -> Response:
        """The 429 of an account whose daily requests for the model are used up. The
        streaming method answers errors as a JSON array of one error, as Code Assist does."""
        delay = self.script.retry_after
        error = _google_error(
            429,
            "RESOURCE_EXHAUSTED",
            f"Quota exceeded for quota metric '{model} Requests' and limit '{model} Requests per "
            "day per user per tier' of service 'cloudcode-pa.googleapis.com'.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "QUOTA_EXHAUSTED",
                    "domain": "cloudcode-pa.googleapis.com",
                    "metadata": {
                        "uiMessage": "true",
                        "model": model,
                        "quotaResetDelay": f"{delay}s",
                    },
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"},
            ],
        )
        return JSONResponse([error], status_code=429)

    # -- OAuth -------------------------------------------------------------------------------

    async def tokeninfo(self, request: RecordedRequest) -> Response:
        """What Google knows of the access token (sent as a bearer), or ``invalid_token``."""
        if request.bearer != self.expected_token:
            return oauth_error("invalid_token", "Invalid Value")
        return JSONResponse(
            {
                "azp": "681255809395.apps.googleusercontent.com",
                "aud": "681255809395.apps.googleusercontent.com",
                "sub": "104200000000000000042",
                "scope": "https://www.googleapis.com/auth/cloud-platform "
                "https://www.googleapis.com/auth/userinfo.email openid",
                "exp": str(int(time.time()) + 3599),
                "expires_in": "3599",
                "email": "user@example.test",
                "email_verified": "true",
                "access_type": "offline",
            }
        )

    async def refresh(self, request: RecordedRequest) -> Response:
        """Refuse the refresh token, as Google refuses one it never issued."""
        return oauth_error("invalid_grant", "Token has been expired or revoked.")

    # -- Code Assist -------------------------------------------------------------------------

    async def load_code_assist(self, request: RecordedRequest) -> Response:
        """An individual already on the free tier, with a managed project."""
        tier = {
            "id": "free-tier",
            "name": "Gemini Code Assist for individuals",
            "description": "Gemini Code Assist for individuals",
            "userDefinedCloudaicompanionProject": False,
            "hasOnboardedPreviously": True,
        }
        return JSONResponse(
            {
                "currentTier": tier,
                "allowedTiers": [{**tier, "isDefault": True}],
                "cloudaicompanionProject": PROJECT,
                "gcpManaged": False,
            }
        )

    async def onboard_user(self, request: RecordedRequest) -> Response:
        """A finished onboarding operation naming the project."""
        return JSONResponse(
            {
                "done": True,
                "response": {"cloudaicompanionProject": {"id": PROJECT, "name": PROJECT}},
            }
        )

    async def list_experiments(self, request: RecordedRequest) -> Response:
        """No experiment flags."""
        return JSONResponse({"experimentIds": [], "flags": []})

    async def retrieve_user_quota(self, request: RecordedRequest) -> Response:
        """No quota buckets reported."""
        return JSONResponse({"buckets": []})

    async def count_tokens(self, request: RecordedRequest) -> Response:
        """A token count in the request's ballpark."""
        return JSONResponse({"totalTokens": max(1, len(request.body) // 4)})

    async def empty(self, request: RecordedRequest) -> Response:
        """``{}``: accepted, nothing to say."""
        return JSONResponse({})

    async def generate_content(self, request: RecordedRequest) -> Response:
        """The CLI's side calls (its model router asks which model should answer): text that
        satisfies the JSON schema the request asks for, or a few words. Not scripted."""
        body = request.json()
        inner = body.get("request", {}) if isinstance(body, dict) else {}
        config = inner.get("generationConfig", {}) if isinstance(inner, dict) else {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        text = json.dumps(_satisfy(schema)) if isinstance(schema, dict) else "stand-in"
        model = str(body.get("model", "gemini-test")) if isinstance(body, dict) else "gemini-test"
        [event] = self._chunks(model, [[{"text": text}]], usage=SIDE_CALL_USAGE)
        return JSONResponse(event.data)

    async def stream_generate_content(self, request: RecordedRequest) -> Response:
        """Answer one generate request as the script says."""
        body = request.json()
        model = str(body.get("model", "gemini-test")) if isinstance(body, dict) else "gemini-test"
        scenario = self.script.next_scenario()
        if scenario is Scenario.UNAUTHORIZED:
            return self.unauthorized(request)
        if scenario is Scenario.RATE_LIMITED:
            return self.rate_limited(model)
        if scenario is Scenario.TOOL_CALL and not _is_tool_result_turn(body):
            events = self._chunks(
                model,
                [[{"functionCall": {"name": self.tool_name, "args": self.tool_args}}]],
            )
        else:
            text = self.script.tool_text if scenario is Scenario.TOOL_CALL else self.script.text
            events = self._chunks(model, [[{"text": chunk}] for chunk in text_chunks(text)])
        return self.sse(events, cut_after=cut_point(scenario, len(events)))

    def _chunks(
        self, model: str, parts: list[list[dict[str, object]]], *, usage: Usage | None = None
    ) -> list[SseEvent]:
        """One SSE event per list of parts; the last one finishes with ``STOP`` and the usage
        (the script's unless given)."""
        usage = usage if usage is not None else self.script.usage
        trace_id = secrets.token_hex(8)
        response_id = secrets.token_urlsafe(16)
        events = []
        for n, chunk in enumerate(parts):
            candidate: dict[str, object] = {"content": {"role": "model", "parts": chunk}}
            last = n == len(parts) - 1
            if last:
                candidate["finishReason"] = "STOP"
            response: dict[str, object] = {
                "candidates": [candidate],
                "modelVersion": model,
                "createTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                "responseId": response_id,
                "usageMetadata": {
                    "promptTokenCount": usage.input_tokens,
                    "candidatesTokenCount": usage.output_tokens if last else n + 1,
                    "totalTokenCount": usage.input_tokens
                    + (usage.output_tokens if last else n + 1),
                    "cachedContentTokenCount": usage.cached_input_tokens,
                },
            }
            events.append(SseEvent({"response": response, "traceId": trace_id}))
        return events

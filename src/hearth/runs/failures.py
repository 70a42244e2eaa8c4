"""Why a CLI's run failed, read from what it said: its error text, an HTTP status, its stderr.

The three CLIs word their errors differently and some only say them on stderr (gemini's
authentication errors come before its first JSON line); ``classify`` maps such text to a
``RunFailure``. The patterns come from the pinned CLIs' own messages (their binaries and bundles)
and from their real headless output against stand-ins of the provider APIs. Whatever becomes a
run's failure message goes through ``scrub`` first: a message is stored and shown to clients, so
it must never carry a token, a key or an OAuth parameter.
"""

from __future__ import annotations

import json
import re
import signal as signals

from hearth.runs.events import RunFailure

MESSAGE_MAX_CHARS = 1000

_PATTERNS: tuple[tuple[RunFailure, re.Pattern[str]], ...] = tuple(
    (failure, re.compile("|".join(patterns), re.IGNORECASE))
    for failure, patterns in (
        (
            RunFailure.NOT_LOGGED_IN,
            (
                r"\b40[13]\b",
                r"unauthori[sz]ed",
                r"unauthenticated",
                r"not logged in",
                r"log ?in again",
                r"sign in again",
                r"please run /login",
                r"\bcodex login\b",
                r"failed to authenticate",
                r"authentication (?:failed|error|required)",
                r"invalid (?:api key|x-api-key|authentication|credentials|grant|token|auth method)",
                r"invalid_grant",
                r"(?:access|refresh) token",
                r"could not be refreshed",
                r"stored credentials|credential storage|credential read failed",
                r"no codex credentials",
                r"manual authorization is required",
                r"set an auth method",
                r"fatalauthenticationerror",
            ),
        ),
        (
            RunFailure.RATE_LIMITED,
            (
                r"\b429\b",
                r"rate[ _-]?limit",
                r"too many requests",
                r"usage[ _]limit",
                r"hit your .{0,40}limit",
                r"quota",
                r"resource[ _]exhausted",
                r"out of credits",
                r"credit balance",
            ),
        ),
        (
            RunFailure.PROVIDER_UNREACHABLE,
            (
                r"\bE(?:CONNREFUSED|CONNRESET|TIMEDOUT|NOTFOUND|AI_AGAIN|HOSTUNREACH|NETUNREACH)\b",
                r"connection (?:refused|reset|lost|failed|closed|error|timed out)",
                r"connection to the api",
                r"stream disconnected",
                r"stream ended",
                r"without a finish reason",
                r"socket hang up",
                r"premature close",
                r"fetch failed",
                r"error sending request",
                r"network",
                r"timed out",
                r"\b(?:dns|tls|ssl)\b",
                r"certificate",
                r"proxy",
                r"tunnel",
                r"overloaded",
                r"\bunavailable\b",
                r"high demand",
                r"server[ _]error",
                r"internal server error|bad gateway|gateway timeout|service unavailable",
                r"status(?: code)?:? ?5\d\d\b",
                r"api error: 5\d\d\b",
                r"\"code\": ?5\d\d\b",
            ),
        ),
    )
)

# Secrets a CLI might echo into an error: each is replaced by "[redacted]".
_SECRETS = tuple(
    re.compile(pattern)
    for pattern in (
        r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*",  # a JWT (OpenAI's and Google's id/access tokens)
        r"\bsk-[\w-]{8,}",  # OpenAI and Anthropic keys and tokens (sk-ant-oat01-…)
        r"\bya29\.[\w.-]{8,}",  # a Google access token
        r"\b1//[\w-]{8,}",  # a Google refresh token
        r"\bAIza[\w-]{20,}",  # a Google API key
        r"\bgh[opsur]_\w{20,}",  # a GitHub token
        r"\b[0-9a-fA-F]{32,}\b",  # a long hex string
    )
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+")
_SECRET_FIELD = re.compile(
    r"(?i)\b(access_token|refresh_token|id_token|api[_-]?key|client_secret|password|secret|"
    r"token|authorization)(\"?\s*[:=]\s*\"?)[^\s\"',;&]+"
)
# A long run of base64url characters mixing cases and digits, with few separators: what a key
# or token looks like, unlike a word, a path piece or a UUID.
_OPAQUE = re.compile(r"[A-Za-z0-9_+/=-]{32,}")
_URL_QUERY = re.compile(r"(https?://[^\s?#\"']+)[?#][^\s\"']*")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
# Lines of stderr that never explain a failure: stack frames and bare brackets.
_NOISE = re.compile(r"^\s*(?:at\s|[\[\]{}()]+,?\s*$)")
# A stderr line that reports an error (the CLIs also print notices and warnings there).
_ERRORISH = re.compile(
    r"error|fatal|fail|exception|panic|cannot|could not|can't|not found|refused|denied|invalid",
    re.IGNORECASE,
)


def classify(text: str) -> RunFailure | None:
    """The failure ``text`` (a CLI's error message) names, or None if it names none we know."""
    for failure, pattern in _PATTERNS:
        if pattern.search(text):
            return failure
    return None


def classify_status(status: int | None) -> RunFailure | None:
    """The failure an HTTP status from the provider means, if it means one."""
    if status in (401, 403):
        return RunFailure.NOT_LOGGED_IN
    if status == 429:
        return RunFailure.RATE_LIMITED
    if status is not None and (status == 408 or 500 <= status <= 599):
        return RunFailure.PROVIDER_UNREACHABLE
    return None


def stderr_cause(stderr_tail: str) -> tuple[RunFailure | None, str]:
    """From a CLI's stderr: the last line that names a failure (and which), else the last line
    that reports an error, else ""."""
    lines = [
        line.strip()
        for line in _ANSI.sub("", stderr_tail).splitlines()
        if line.strip() and not _NOISE.match(line)
    ]
    for line in reversed(lines):
        if (failure := classify(line)) is not None:
            return failure, line
    return None, next((line for line in reversed(lines) if _ERRORISH.search(line)), "")


def readable(text: str) -> str:
    """``text`` with an embedded provider error body (``{"error": {...}}``) said in words."""
    start = text.find('{"error"')
    if start < 0:
        return text
    try:
        body, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return text
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return text
    said = " ".join(str(error[key]) for key in ("code", "status") if error.get(key) is not None)
    return f"API error {said}: {error['message']}" if said else f"API error: {error['message']}"


# C0 controls but the whitespace ``split`` folds, and DEL (after the colours are taken out).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def scrub(text: str, *, limit: int = MESSAGE_MAX_CHARS) -> str:
    """``text`` fit for a stored, client-visible message: no secrets, no colours, no control
    characters (PostgreSQL's text holds no NUL: the run's row would not be written), one line."""
    text = _CONTROL.sub(" ", _ANSI.sub("", text))
    text = _URL_QUERY.sub(r"\1?[redacted]", text)
    text = _BEARER.sub(r"\1 [redacted]", text)
    text = _SECRET_FIELD.sub(r"\1\2[redacted]", text)
    for pattern in _SECRETS:
        text = pattern.sub("[redacted]", text)
    text = _OPAQUE.sub(_opaque_or_kept, text)
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def exit_description(cli: str, *, exit_code: int | None, signal: int | None) -> str:
    """How the CLI's process ended, in words."""
    if signal is not None:
        try:
            name = signals.Signals(signal).name
        except ValueError:
            return f"{cli} was killed by signal {signal}"
        return f"{cli} was killed by signal {signal} ({name})"
    if exit_code is None:
        return f"{cli} ended without an exit status"
    return f"{cli} exited with status {exit_code}"


def _opaque_or_kept(match: re.Match[str]) -> str:
    token = match.group(0)
    looks_random = (
        any(c.islower() for c in token)
        and any(c.isupper() for c in token)
        and any(c.isdigit() for c in token)
        and token.count("-") + token.count("/") < 4
    )
    return "[redacted]" if looks_random else token

"""What the SDK raises: one tree, so ``except HearthSdkError`` catches everything of ours.

    HearthSdkError               root; never raised itself
    ├── HearthConfigError        no API key to call the API with
    ├── HearthApiError           the API answered an error: status, code, message
    ├── HearthConnectionError    the API could not be reached, or a stream stayed broken
    ├── ExecFailed               ``ExecResult.check()``: the command did not exit 0
    └── WaitTimeout              a wait ran out of time (also a ``TimeoutError``)

httpx's own exceptions never leave the SDK: they are translated where a request is sent, with
``raise … from exc``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hearth.sdk._exec import ExecResult


class HearthSdkError(Exception):
    """Root of every exception the SDK raises."""


class HearthConfigError(HearthSdkError):
    """The client lacks what it needs to call the API (an API key)."""


class HearthApiError(HearthSdkError):
    """The API answered ``{"error": {"code", "message"}}`` with HTTP ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.code, self.message))

    @classmethod
    def of_answer(cls, status: int, content: bytes) -> HearthApiError:
        """The error an answer with ``status`` and body ``content`` carries; a body that is not
        the API's error object (a proxy's page, a plain-text 400) keeps its text as message."""
        try:
            error = json.loads(content)["error"]
            return cls(status, str(error["code"]), str(error["message"]))
        except (ValueError, KeyError, TypeError):
            text = content.decode("utf-8", "replace").strip()[:300]
            return cls(status, f"http_{status}", text or f"HTTP {status}")


class HearthConnectionError(HearthSdkError):
    """No answer: the API was unreachable (``unreachable``), or a command's event stream broke
    off and could not be picked up again (``stream_broken``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message))

    @classmethod
    def unreachable(cls, url: str, exc: Exception) -> HearthConnectionError:
        """The error for a request to ``url`` that got no answer."""
        return cls("unreachable", f"cannot reach {url}: {type(exc).__name__}: {exc}")


class ExecFailed(HearthSdkError):
    """A command ended other than with exit code 0; ``result`` says how."""

    def __init__(self, result: ExecResult) -> None:
        how = f"signal {result.signal}" if result.signal else f"exit code {result.exit_code}"
        super().__init__(f"command {result.exec_id} ended with {how} ({result.reason})")
        self.result = result


class WaitTimeout(HearthSdkError, TimeoutError):
    """Waiting for something (a login session to end) took longer than allowed."""

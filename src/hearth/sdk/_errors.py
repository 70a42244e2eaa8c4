"""What the SDK raises: one tree, so ``except HearthSdkError`` catches everything of ours.

    HearthSdkError               root; never raised itself
    ├── HearthConfigError        no API key to call the API with, or one no header can carry
    ├── HearthApiError           the API answered an error: status, code, message
    ├── HearthConnectionError    no answer: the request never went out (``unreachable``), it
    │                            went out but its answer was lost (``outcome_unknown``), or a
    │                            stream stayed broken (``stream_broken``)
    ├── LocalFileChanged         a local file shrank while ``write`` sent it
    ├── InvalidArchive           a directory's download came as a tar that is unreadable or
    │                            would write outside its target, or a download (a file's
    │                            too) brought more than ``max_bytes``; nothing was written
    ├── ExecFailed               ``ExecResult.check()``: the command did not exit 0
    └── WaitTimeout              a wait ran out of time (also a ``TimeoutError``)

httpx's own exceptions never leave the SDK: they are translated where a request is sent, with
``raise … from exc``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from hearth.sdk._exec import ExecResult


class HearthSdkError(Exception):
    """Root of every exception the SDK raises."""


class HearthConfigError(HearthSdkError):
    """The client lacks what it needs to call the API (an API key it can send)."""


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


# Transport errors raised before any byte of the request went out: the API cannot have acted.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
)
# Methods that change nothing: whatever became of one, sending it again is harmless.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def never_sent(exc: Exception) -> bool:
    """Whether the transport error ``exc`` came before the request went out."""
    return isinstance(exc, _NOT_SENT)


def transport_text(exc: Exception) -> str:
    """``exc`` as a message shows it: its type and text, but never a ``LocalProtocolError``'s
    text, which quotes the header (the API key's among them) it refused."""
    if isinstance(exc, httpx.LocalProtocolError):
        what = "a header" if str(exc).startswith("Illegal header") else "the request"
        return f"{type(exc).__name__}: {what} could not be sent as HTTP (its text withheld)"
    return f"{type(exc).__name__}: {exc}"


# The userinfo of a URL (``user:password@``), from after its scheme to the host's ``@``.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")


def shown_url(url: str) -> str:
    """``url`` as a message shows it: a user and password in it masked (``***@host``)."""
    return _USERINFO.sub(r"\1***@", url, count=1)


class HearthConnectionError(HearthSdkError):
    """No answer. ``code`` says what that leaves: ``unreachable``, the request never reached the
    API (or changes nothing), so nothing happened; ``outcome_unknown``, a request that changes
    something went out and its answer was lost, so it may have taken effect (a command may run);
    ``stream_broken``, an event stream broke off and could not be picked up again."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message))

    @classmethod
    def of_transport(cls, url: str, method: str, exc: Exception) -> HearthConnectionError:
        """The error for a ``method`` request to ``url`` that got no answer (``exc``)."""
        if method.upper() in _SAFE_METHODS or never_sent(exc):
            return cls("unreachable", f"cannot reach {shown_url(url)}: {transport_text(exc)}")
        return cls.outcome_unknown(f"{method.upper()} {shown_url(url)}", exc)

    @classmethod
    def outcome_unknown(cls, what: str, exc: Exception) -> HearthConnectionError:
        """The error for request ``what`` that went out, its answer lost to ``exc``."""
        return cls(
            "outcome_unknown",
            f"{what}: the connection broke after the request went out, so whether it took "
            f"effect is unknown ({transport_text(exc)})",
        )


class InvalidArchive(HearthSdkError):
    """A directory's download came as a tar that is unreadable or would write outside its
    target (``member`` names the member refused), or a download, a file's too, brought more
    than its ``max_bytes``; nothing of it was written."""

    code = "invalid_archive"

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.member = member

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.member))


class LocalFileChanged(HearthSdkError):
    """A local file shrank while ``write`` sent it: less came than its length, declared when the
    upload began, so the upload was abandoned and nothing was written in the VM."""

    code = "local_file_changed"

    def __init__(self, path: str, declared: int, read: int) -> None:
        self.message = (
            f"{path} shrank while it was sent ({read} of the {declared} bytes it held when the "
            "upload began); nothing was written"
        )
        super().__init__(self.message)
        self.path = path
        self.declared = declared
        self.read = read

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.declared, self.read))


class ExecFailed(HearthSdkError):
    """A command ended other than with exit code 0; ``result`` says how."""

    def __init__(self, result: ExecResult) -> None:
        how = f"signal {result.signal}" if result.signal else f"exit code {result.exit_code}"
        super().__init__(f"command {result.exec_id} ended with {how} ({result.reason})")
        self.result = result


class WaitTimeout(HearthSdkError, TimeoutError):
    """Waiting for something (a login session to end) took longer than allowed."""

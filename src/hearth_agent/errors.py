"""The agent's exception tree; each error carries its client code and HTTP status.

    AgentError                  root; never raised itself
    ├── ConfigError             options are inconsistent at start (exit code 2, never HTTP)
    ├── BadRequest              the request is malformed at the HTTP level (400)
    │   └── MalformedJson       the body is not valid UTF-8 JSON (400)
    ├── Unauthorized            missing or wrong bearer token (401)
    │   └── Unclaimed           the agent has no token yet; POST /init first (401)
    ├── NotFound                no such route, or no such stored document (404)
    │   └── UnknownProvider     the provider is not in the table (404)
    ├── MethodNotAllowed        the route exists but not for this method (405, carries Allow)
    ├── AlreadyClaimed          /init after the agent already has a token, or in insecure mode (409)
    ├── CorruptDocument         the stored document is not valid JSON (409)
    ├── LengthRequired          PUT/POST without Content-Length (411)
    ├── BodyTooLarge            Content-Length above the limit (413)
    ├── InvalidInput            a request field is missing or has the wrong type (422)
    │   └── InvalidDocument     the credential document fails its provider's rules (422)
    ├── StorageError            the filesystem refused a write (500)
    └── ReseedFailed            the claim could not reseed the guest kernel's CRNG (500)

Lower-layer errors (OSError, JSON decoding) are translated into these at the boundary with
``raise ... from exc``; the server maps them to HTTP in exactly one place. Messages never contain
tokens or credential contents.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    code: str = "internal"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AgentError):
    """The command-line options cannot start a safe agent."""

    code = "config_error"


class BadRequest(AgentError):
    """The request is malformed at the HTTP level."""

    code = "bad_request"
    http_status = 400


class MalformedJson(BadRequest):
    """The request body is not valid UTF-8 JSON."""

    code = "malformed_json"


class Unauthorized(AgentError):
    """The bearer token is missing or wrong."""

    code = "unauthorized"
    http_status = 401


class Unclaimed(Unauthorized):
    """The agent has no token yet, so nothing but /health and /init can be used."""

    code = "unclaimed"


class NotFound(AgentError):
    """No such route, or no such stored document."""

    code = "not_found"
    http_status = 404


class UnknownProvider(NotFound):
    """The provider is not one the agent knows how to store."""

    code = "unknown_provider"


class MethodNotAllowed(AgentError):
    """The route exists but does not accept this method."""

    code = "method_not_allowed"
    http_status = 405

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow


class AlreadyClaimed(AgentError):
    """The agent already has a token (or runs without auth), so it cannot be claimed."""

    code = "already_claimed"
    http_status = 409


class CorruptDocument(AgentError):
    """The stored credential document is not valid JSON, so it cannot be returned."""

    code = "corrupt_document"
    http_status = 409


class LengthRequired(AgentError):
    """A request that needs a body did not declare its Content-Length."""

    code = "length_required"
    http_status = 411


class BodyTooLarge(AgentError):
    """The declared body is larger than the agent accepts."""

    code = "body_too_large"
    http_status = 413


class InvalidInput(AgentError):
    """A request field is missing or has the wrong type; the message names the field."""

    code = "invalid_request"
    http_status = 422


class InvalidDocument(InvalidInput):
    """The credential document does not satisfy its provider's rules."""

    code = "invalid_document"


class StorageError(AgentError):
    """The filesystem refused to store a document."""

    code = "storage_error"
    http_status = 500


class ReseedFailed(AgentError):
    """The claim could not credit entropy to the kernel and reseed its CRNG; nothing was stored."""

    code = "reseed_failed"
    http_status = 500

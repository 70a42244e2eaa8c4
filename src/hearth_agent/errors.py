"""The agent's exception tree; each error carries its client code and HTTP status.

    AgentError                  root; never raised itself
    ├── ConfigError             options are inconsistent at start (exit code 2, never HTTP)
    ├── BadRequest              the request is malformed at the HTTP level (400)
    │   └── MalformedJson       the body is not valid UTF-8 JSON (400)
    ├── Unauthorized            missing or wrong bearer token (401)
    │   └── Unclaimed           the agent has no token yet; POST /init first (401)
    ├── NotFound                no such route, or no such stored document (404)
    │   ├── UnknownProvider     the provider is not in the table (404)
    │   ├── ExecNotFound        no exec has this id, or it was forgotten (404)
    │   ├── PathNotFound        no file or directory at this workspace path (404)
    │   └── VolumeNotFound      no disk with the workspace volume's serial appeared (404)
    ├── MethodNotAllowed        the route exists but not for this method (405, carries Allow)
    ├── AlreadyClaimed          /init after the agent already has a token, or in insecure mode (409)
    ├── UpdatesDisabled         /agent/update on an agent started without a usable --updates (409)
    ├── UpdateInProgress        /agent/update while the guard of an earlier update runs (409)
    ├── AlreadyCurrent          /agent/update with the very build the agent runs (409)
    ├── CorruptDocument         the stored document is not valid JSON (409)
    ├── StdinClosed             the exec's stdin is closed, or was never open (409)
    ├── StdinBacklogFull        the exec is not reading its stdin fast enough (409)
    ├── PathConflict            the path is a directory where a file goes, or the like (409)
    ├── NotATerminal            a resize for an exec that runs without a terminal (409)
    ├── ExecEventsGone          the events to resume after were acknowledged and dropped (410)
    ├── LengthRequired          PUT/POST without Content-Length (411)
    ├── BodyTooLarge            Content-Length above the limit (413)
    │   ├── FileTooLarge        an upload (or an archive's files) above its cap (413)
    │   └── BundleTooLarge      an update bundle above MAX_BUNDLE_BYTES (413)
    ├── InvalidInput            a request field is missing or has the wrong type (422)
    │   ├── InvalidDocument     the credential document fails its provider's rules (422)
    │   ├── ExecStartFailed     the command cannot be started (not found, not executable) (422)
    │   ├── PathOutsideWorkspace  a path (or an archive member, a symlink) leads out (422)
    │   ├── InvalidArchive      the tar cannot be read, or has a member of a refused type (422)
    │   ├── DigestMismatch      an update bundle's sha256 is not the one its header states (422)
    │   └── InvalidBundle       an update bundle (or its headers) is not what updates accept (422)
    ├── TooManyExecs            the cap on concurrently running execs is reached (429)
    ├── StorageError            the filesystem refused a write (500)
    │   └── DiskFull            no room (or quota) left on the disk for the write (507)
    ├── UpdateFailed            an update could not be staged, handed to its guard or swapped (500)
    ├── VolumeFailed            formatting or mounting the workspace volume failed (500)
    └── ReseedFailed            the claim could not reseed the guest kernel's CRNG (500)

Lower-layer errors (OSError, JSON decoding) are translated into these at the boundary with
``raise ... from exc``; the server maps them to HTTP in exactly one place. Messages never contain
tokens or credential contents.
"""

from __future__ import annotations

import errno


class AgentError(Exception):
    """Root of every error the agent raises on purpose.

    A subclass states its client code and HTTP status in its header, as in
    ``class NotFound(AgentError, code="not_found", http_status=404)``; what it leaves out it
    inherits.
    """

    code: str = "internal"
    http_status: int = 500

    def __init_subclass__(
        cls, *, code: str | None = None, http_status: int | None = None, **kwargs: object
    ) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if http_status is not None:
            cls.http_status = http_status

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AgentError, code="config_error"):
    """The command-line options cannot start a safe agent."""


class BadRequest(AgentError, code="bad_request", http_status=400):
    """The request is malformed at the HTTP level."""


class MalformedJson(BadRequest, code="malformed_json"):
    """The request body is not valid UTF-8 JSON."""


class Unauthorized(AgentError, code="unauthorized", http_status=401):
    """The bearer token is missing or wrong."""


class Unclaimed(Unauthorized, code="unclaimed"):
    """The agent has no token yet, so nothing but /health and /init can be used."""


class NotFound(AgentError, code="not_found", http_status=404):
    """No such route, or no such stored document."""


class UnknownProvider(NotFound, code="unknown_provider"):
    """The provider is not one the agent knows how to store."""


class ExecNotFound(NotFound, code="exec_not_found"):
    """No exec has this id (never started, or forgotten after its retention)."""


class PathNotFound(NotFound, code="path_not_found"):
    """Nothing exists at this path of the workspace."""


class MethodNotAllowed(AgentError, code="method_not_allowed", http_status=405):
    """The route exists but does not accept this method."""

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow


class AlreadyClaimed(AgentError, code="already_claimed", http_status=409):
    """The agent already has a token (or runs without auth), so it cannot be claimed."""


class UpdatesDisabled(AgentError, code="updates_disabled", http_status=409):
    """The agent was started without ``--updates DIR`` (or with one it cannot use)."""


class UpdateInProgress(AgentError, code="update_in_progress", http_status=409):
    """The guard of an earlier update still watches it; retry once it has a result."""


class AlreadyCurrent(AgentError, code="already_current", http_status=409):
    """The bundle is the very build (version and sha256) the agent runs already."""


class CorruptDocument(AgentError, code="corrupt_document", http_status=409):
    """The stored credential document is not valid JSON, so it cannot be returned."""


class StdinClosed(AgentError, code="stdin_closed", http_status=409):
    """The exec's stdin was closed (eof sent, process gone) or never kept open."""


class StdinBacklogFull(AgentError, code="stdin_backlog_full", http_status=409):
    """Too much stdin is queued for an exec that is not reading it; retry once it reads."""


class NotATerminal(AgentError, code="not_a_terminal", http_status=409):
    """The exec runs on pipes, not on a pseudo-terminal, so it has no size to set."""


class PathConflict(AgentError, code="path_conflict", http_status=409):
    """What is at the path cannot take the action: a directory where a file goes, a file where
    an archive is extracted, a non-empty directory removed without ``recursive``."""


class ExecEventsGone(AgentError, code="exec_events_gone", http_status=410):
    """The events after the requested id were acknowledged by a reader and dropped."""


class LengthRequired(AgentError, code="length_required", http_status=411):
    """A request that needs a body did not declare its Content-Length."""


class BodyTooLarge(AgentError, code="body_too_large", http_status=413):
    """The declared body is larger than the agent accepts."""


class FileTooLarge(BodyTooLarge, code="file_too_large"):
    """An upload, or the files of an archive together, is larger than its cap; nothing is kept."""


class BundleTooLarge(BodyTooLarge, code="bundle_too_large"):
    """An update bundle is larger than ``update.MAX_BUNDLE_BYTES``; nothing was written."""


class InvalidInput(AgentError, code="invalid_request", http_status=422):
    """A request field is missing or has the wrong type; the message names the field."""


class InvalidDocument(InvalidInput, code="invalid_document"):
    """The credential document does not satisfy its provider's rules."""


class ExecStartFailed(InvalidInput, code="exec_start_failed"):
    """The command could not be started: not found, not executable, or the system refused."""


class PathOutsideWorkspace(InvalidInput, code="path_outside_workspace"):
    """A path is absolute outside the workspace, has ``..``, or goes through a symlink (or an
    archive member's link) that points out of it; nothing was written."""


class InvalidArchive(InvalidInput, code="invalid_archive"):
    """The tar cannot be read, or has a member the agent refuses (a device, a fifo)."""


class DigestMismatch(InvalidInput, code="digest_mismatch"):
    """The update bundle's sha256 differs from its header's; nothing was written."""


class InvalidBundle(InvalidInput, code="invalid_bundle"):
    """The update bundle (gzip, tar, members) or its version header is refused; nothing swapped."""


class TooManyExecs(AgentError, code="too_many_execs", http_status=429):
    """The cap on concurrently running execs is reached; wait for one to end."""


class StorageError(AgentError, code="storage_error", http_status=500):
    """The filesystem refused to store a document."""

    @classmethod
    def from_os_error(cls, what: str, exc: OSError) -> StorageError:
        """The error a failed write of ``what`` is: DiskFull when no room is left."""
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(f"{what}: no room left on the disk ({reason})")
        return cls(f"{what}: {reason}")


class DiskFull(StorageError, code="disk_full", http_status=507):
    """The disk (or the quota) has no room left for the write."""


class UpdateFailed(AgentError, code="update_failed", http_status=500):
    """The filesystem or the guard failed an update; the agent keeps running its own release."""


class ReseedFailed(AgentError, code="reseed_failed", http_status=500):
    """The claim could not credit entropy to the kernel and reseed its CRNG; nothing was stored."""


class VolumeNotFound(NotFound, code="volume_not_found"):
    """No disk with the workspace volume's serial appeared in the guest in time."""


class VolumeFailed(AgentError, code="volume_failed", http_status=500):
    """Formatting or mounting the workspace volume failed (the message quotes the tool)."""

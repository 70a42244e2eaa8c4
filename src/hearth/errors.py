"""Hearth's exception tree: every error the product raises, each with a client code and HTTP status.

    HearthError                      root; never raised itself
    ├── ConfigError                  settings invalid at start (400 never reaches a client)
    ├── NotFound                     a resource the caller may see does not exist (404)
    │   └── PathNotFound             nothing at that path of a VM's workspace
    ├── InvalidInput                 bad input a client sent (422)
    │   ├── PathOutsideWorkspace     a path (or a tar member, a symlink) leads out of the workspace
    │   └── InvalidArchive           a tar that cannot be read, or with a refused member
    ├── Conflict                     the resource is in a state that forbids the action (409)
    │   ├── QuotaExceeded            as many as allowed already (a user's VMs or disk, webhooks)
    │   ├── ActiveSessionExists      the user already has a login in progress for that provider
    │   ├── PathConflict             a directory where a file goes, a non-empty one to remove, ...
    │   ├── NotLoggedIn              no login for that provider was delivered into the VM
    │   ├── VmEnded                  the VM a command ran in has ended (destroyed, failed)
    │   └── WorkspaceUnusable        the user's workspace volume will not attach or mount
    ├── EventsGone                   the events after that id are no longer kept (410)
    ├── CapacityExhausted            the host has no room: Browser VM slots or memory (429)
    ├── TooManyRunning               the VM already runs as many execs as allowed (429)
    ├── Unauthorized                 missing or wrong API key (401)
    ├── Forbidden                    the key may not do this (admin only) (403)
    ├── BodyTooLarge                 the request body exceeds the configured limit (413)
    │   └── FileTooLarge             an upload exceeds HEARTH_FILES_MAX_BYTES
    ├── InsufficientStorage          a VM's disk has no room left for an upload (507)
    ├── ImageError                   golden images: build, install-agent, verify, rollback
    │   ├── NotAnImage               the path is missing or is not an ext4 filesystem image
    │   ├── ImageReadOnly            the image (or its directory) cannot be written
    │   ├── ImageNoSpace             not enough free space to do the change safely
    │   ├── ImageVerifyFailed        the image lacks something Hearth needs (names what)
    │   ├── NoBackup                 rollback asked for but no backup exists
    │   ├── ImageNotBuilt            the image a VM type needs has not been built yet
    │   └── BuildFailed              a build phase (debootstrap, kernel, mkfs, ...) failed
    ├── ToolMissing                  a host program Hearth needs is not installed
    ├── NotSupported                 the selected VMM cannot do this (501)
    ├── TeardownError                some cleanups of a teardown failed (names each)
    ├── CredentialError              the credential vault (500)      [hearth.credentials.errors]
    │   └── DecryptionFailed         a sealed document did not open  [hearth.credentials.errors]
    │       └── UnknownMasterKey     its master key is unknown       [hearth.credentials.errors]
    ├── StageTimeout                 a login stage missed its deadline (504)  [hearth.auth.stages]
    ├── BenchError                   a benchmark run failed or leaked      [hearth.bench.errors]
    │   ├── PageNavigated            the tab navigated under a DevTools call [hearth.bench.signin]
    │   ├── StreamCut                a stand-in's cut  [hearth.bench.standins.standin]
    │   └── UndecodableBody          unreadable body [hearth.bench.standins.recording]
    ├── ApiError                     an error the controller answered        [hearth.cli.client]
    └── VmError                      the VM layer
        ├── VmNotReady               the agent did not answer healthy before the deadline
        ├── VmProcessExited          the VMM process died (exit status + console tail)
        ├── VmStateError             an illegal lifecycle transition
        ├── SnapshotError            saving or restoring a VM state failed
        │   └── SavedStateCorrupt    a hibernated VM's saved state is missing, altered or cut short
        ├── RfbRefused               the VM's VNC server refused the view      [hearth.auth.rfb]
        └── BackendError             the VMM refused a request (e.g. Firecracker fault_message)
            └── AgentError           the agent erred or did not answer     [hearth.agent_client]
                ├── StreamSlept      a followed stream broke as its VM slept [hearth.control.execs]
                └── GarbledOutput    output that holds no bytes [hearth.agent_output]

A class defined outside this module names its module in brackets; a unit test walks every
subclass of ``HearthError`` and fails when one is missing here or sits under another parent.
Lower-layer errors (OSError, subprocess failures, httpx errors) are translated into these at the
boundary with ``raise ... from exc``; the API maps them to HTTP in exactly one table. Messages
never contain secrets.
"""

from __future__ import annotations


class HearthError(Exception):
    """Root of every error Hearth raises on purpose."""

    code: str = "internal"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, dict[str, str]]:
        """The wire shape every client gets: ``{"error": {"code", "message"}}``."""
        return {"error": {"code": self.code, "message": self.message}}


class ConfigError(HearthError):
    """Settings are invalid; raised at start before anything runs."""

    code = "config_invalid"
    http_status = 500


class NotFound(HearthError):
    """A resource the caller may see does not exist."""

    code = "not_found"
    http_status = 404


class InvalidInput(HearthError):
    """The client sent input that fails validation."""

    code = "invalid_input"
    http_status = 422


class PathNotFound(NotFound):
    """Nothing exists at that path of the VM's workspace."""

    code = "path_not_found"
    http_status = 404


class PathOutsideWorkspace(InvalidInput):
    """A path is absolute elsewhere, has ``..``, or goes through a symlink (or a tar member's
    link) that leads out of the VM's workspace; nothing was written."""

    code = "path_outside_workspace"
    http_status = 422


class InvalidArchive(InvalidInput):
    """A tar that cannot be read, or with a member the agent refuses (a device, a fifo, a file
    below a symlink of the archive); nothing was written."""

    code = "invalid_archive"
    http_status = 422


class Conflict(HearthError):
    """The resource's current state forbids the requested action."""

    code = "conflict"
    http_status = 409


class QuotaExceeded(Conflict):
    """As many as a quota allows exist already: a user's VMs of that type, their disk, webhooks."""

    code = "quota_exceeded"
    http_status = 409


class ActiveSessionExists(Conflict):
    """The user already has an auth session in progress for that provider (one at a time)."""

    code = "conflict"
    http_status = 409


class NotLoggedIn(Conflict):
    """A run asked for a provider whose login was never delivered into that VM."""

    code = "not_logged_in"
    http_status = 409


class VmEnded(Conflict):
    """The VM a command ran in has ended (stopping, destroyed or failed): following it ends."""

    code = "conflict"
    http_status = 409


class WorkspaceUnusable(Conflict):
    """A user's workspace volume will not attach or mount while their CLI VM runs on (a volume
    file cut short or corrupt, a filesystem the guest refuses): no CLI VM of theirs can have
    their files until ``DELETE /api/users/{id}/workspace`` removes it (and them)."""

    code = "workspace_unusable"
    http_status = 409


class EventsGone(HearthError):
    """A stream resumed after an event older than what is still kept."""

    code = "events_gone"
    http_status = 410


class PathConflict(Conflict):
    """What is at the path cannot take the action: a directory where a file goes, a file where a
    tar is extracted, a directory with something in it removed without ``recursive``."""

    code = "path_conflict"
    http_status = 409


class CapacityExhausted(HearthError):
    """The host has no room for the VM (Browser VM slots or memory); retry later."""

    code = "capacity_exhausted"
    http_status = 429


class TooManyRunning(HearthError):
    """The VM already runs as many commands as ``HEARTH_EXEC_MAX_PER_VM`` allows; retry later."""

    code = "too_many_running"
    http_status = 429


class Unauthorized(HearthError):
    """The request carries no API key, or one that is unknown or revoked."""

    code = "unauthorized"
    http_status = 401


class Forbidden(HearthError):
    """The API key is valid but may not do this (admin only)."""

    code = "forbidden"
    http_status = 403


class BodyTooLarge(HearthError):
    """The request body is larger than the controller reads (``HEARTH_MAX_BODY_BYTES``)."""

    code = "body_too_large"
    http_status = 413


class FileTooLarge(BodyTooLarge):
    """An upload (or the files of a tar together) is larger than ``HEARTH_FILES_MAX_BYTES``;
    nothing of it was kept."""

    code = "file_too_large"
    http_status = 413


class InsufficientStorage(HearthError):
    """A VM's disk (or its quota) has no room left for a write; nothing of it was kept."""

    code = "insufficient_storage"
    http_status = 507


class TeardownError(HearthError):
    """Some steps of a teardown failed; every step still ran (the message names each failure)."""

    code = "teardown_failed"
    http_status = 500


class NotSupported(HearthError):
    """The selected VMM (``HEARTH_VMM``) cannot do what was asked; the message says what can."""

    code = "not_supported"
    http_status = 501


class ToolMissing(HearthError):
    """A host program Hearth needs is not installed."""

    code = "tool_missing"
    http_status = 503


class ImageError(HearthError):
    """Something went wrong with a golden image."""

    code = "image_error"
    http_status = 500


class NotAnImage(ImageError):
    """The path is missing or is not an ext4 filesystem image."""

    code = "not_an_image"
    http_status = 422


class ImageReadOnly(ImageError):
    """The image or its directory cannot be written."""

    code = "image_read_only"
    http_status = 409


class ImageNoSpace(ImageError):
    """There is not enough free space to change the image safely."""

    code = "image_no_space"
    http_status = 507


class ImageVerifyFailed(ImageError):
    """The image lacks something Hearth needs; ``missing`` names each item."""

    code = "image_verify_failed"
    http_status = 422

    def __init__(self, message: str, *, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class NoBackup(ImageError):
    """Rollback was asked for but the image has no backup."""

    code = "no_backup"
    http_status = 404


class ImageNotBuilt(ImageError):
    """The image a VM type needs has not been built; the message says how to build it."""

    code = "image_not_built"
    http_status = 503


class BuildFailed(ImageError):
    """A build phase failed; the message names the phase and the tool's last output."""

    code = "image_build_failed"
    http_status = 500


class VmError(HearthError):
    """Something went wrong in the VM layer."""

    code = "vm_error"
    http_status = 500


class VmNotReady(VmError):
    """The VM's agent did not answer healthy before the deadline."""

    code = "vm_not_ready"
    http_status = 504


class VmProcessExited(VmError):
    """The VMM process exited; the message carries its status and the console's last lines."""

    code = "vm_process_exited"
    http_status = 502


class VmStateError(VmError):
    """A lifecycle transition that the state table forbids."""

    code = "vm_state_conflict"
    http_status = 409


class SnapshotError(VmError):
    """Saving or restoring a VM state failed."""

    code = "snapshot_failed"
    http_status = 500


class SavedStateCorrupt(SnapshotError):
    """A hibernated VM's saved state is missing, altered or cut short: it cannot be resumed."""

    code = "saved_state_corrupt"
    http_status = 500


class BackendError(VmError):
    """The VMM refused a request; the message quotes the VMM's own reason."""

    code = "backend_error"
    http_status = 502

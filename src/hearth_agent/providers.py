"""The provider table: where each CLI keeps its credentials, how they are checked and merged."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum

from hearth_agent import wire
from hearth_agent.errors import InvalidDocument, UnknownProvider


class Kind(StrEnum):
    """The JSON type a document field must have."""

    STRING = "a string"
    INTEGER = "an integer"  # JSON integer; true/false are not integers
    NUMBER = "a number"  # integer or finite float; true/false are not numbers
    STRING_LIST = "a list of strings"
    OBJECT = "an object"


@dataclass(frozen=True)
class Field:
    """One field rule: a dotted path into the document, its kind, and whether it may be absent."""

    path: str
    kind: Kind
    _: KW_ONLY
    required: bool = True
    nullable: bool = False

    def describe(self) -> str:
        """The type phrase used in error messages, e.g. ``"a string or null"``."""
        return f"{self.kind.value} or null" if self.nullable else self.kind.value


# A component of a side file's key path that stands for the workspace's path (where commands
# and the terminal start); the path's own dots are then no separators.
WORKSPACE_KEY = "{workspace}"


@dataclass(frozen=True)
class SideFile:
    """A JSON file next to the credentials that must hold some keys for the CLI to use them.

    ``sets`` maps dotted key paths (``WORKSPACE_KEY`` as a component names the workspace) to
    values; every other key in the file is kept.

    Delivery writes them, not the image, because they belong to the login and to the workspace:
    a CLI that is logged in should open on its prompt, in the VM's terminal as in a run, not on
    screens meant for a person at a new install (claude's theme and login picker) nor on a "do
    you trust this folder?" dialog about the user's own workspace (the VM is the sandbox, and
    runs already start there without asking). The agent knows its workspace (``--workspace``),
    an image does not; and the CLIs rewrite these files as they run, so a merge at delivery
    keeps whatever they added.
    """

    path: str
    sets: tuple[tuple[str, object], ...]


ExpiryReader = Callable[[Mapping[str, object]], float | None]


@dataclass(frozen=True)
class CredentialFormat:
    """Everything the agent knows about one CLI's credential document."""

    name: wire.Provider
    path: str  # relative to the home directory
    fields: tuple[Field, ...]
    expiry: ExpiryReader
    side_files: tuple[SideFile, ...] = ()

    @property
    def display_path(self) -> str:
        """The primary file as shown to clients, relative to home (``~/...``)."""
        return f"~/{self.path}"

    def validate(self, document: object) -> dict[str, object]:
        """Return the document if it satisfies every field rule, else raise InvalidDocument."""
        if not isinstance(document, dict):
            raise InvalidDocument("credential document must be a JSON object")
        for field in self.fields:
            found, value = _lookup(document, field.path)
            if not found:
                if field.required and _parent_present(document, field.path):
                    raise InvalidDocument(f"field '{field.path}' is required")
                continue
            if value is None and field.nullable:
                continue
            if not _has_kind(value, field.kind):
                raise InvalidDocument(f"field '{field.path}' must be {field.describe()}")
        return document

    def expires_at(self, document: object) -> float | None:
        """Unix time at which the document's access token expires, or None if unknown."""
        if not isinstance(document, dict):
            return None
        return self.expiry(document)


def _lookup(document: Mapping[str, object], path: str) -> tuple[bool, object]:
    node: object = document
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _parent_present(document: Mapping[str, object], path: str) -> bool:
    # Rules are ordered parents first, so a missing parent has already been reported when it is
    # required; an optional parent that is absent makes its children optional too.
    parent, _, _ = path.rpartition(".")
    if not parent:
        return True
    found, value = _lookup(document, parent)
    return found and isinstance(value, dict)


def _as_number(value: object) -> float | None:
    """The value as a float if it is a JSON number (not a boolean) and finite, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # JSON integers are unbounded; one beyond float range is no timestamp
        return None
    return number if math.isfinite(number) else None


def _has_kind(value: object, kind: Kind) -> bool:
    if kind is Kind.STRING:
        return isinstance(value, str)
    if kind is Kind.INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is Kind.NUMBER:
        return _as_number(value) is not None
    if kind is Kind.STRING_LIST:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, dict)


def _millis_at(path: str) -> ExpiryReader:
    """Expiry stored as Unix milliseconds at ``path``."""

    def read(document: Mapping[str, object]) -> float | None:
        _, value = _lookup(document, path)
        millis = _as_number(value)
        return None if millis is None else millis / 1000.0

    return read


def _seconds_at(path: str) -> ExpiryReader:
    """Expiry stored as Unix seconds at ``path``."""

    def read(document: Mapping[str, object]) -> float | None:
        _, value = _lookup(document, path)
        return _as_number(value)

    return read


def jwt_expiry(token: object) -> float | None:
    """The ``exp`` claim of an unverified JWT, or None if the value is not a JWT with one.

    The signature is not checked: the agent only reports when the CLI will need a refresh.
    """
    if not isinstance(token, str):
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
    if not isinstance(claims, dict):
        return None
    return _as_number(claims.get("exp"))


def _jwt_exp_at(path: str) -> ExpiryReader:
    """Expiry taken from the ``exp`` claim of the JWT at ``path``."""

    def read(document: Mapping[str, object]) -> float | None:
        _, value = _lookup(document, path)
        return jwt_expiry(value)

    return read


def merge_side_document(
    existing: object, sets: tuple[tuple[str, object], ...], *, workspace: str = ""
) -> dict[str, object]:
    """Return a copy of ``existing`` with every dotted key in ``sets`` set to its value, a
    ``WORKSPACE_KEY`` component read as ``workspace``.

    A document that is not a JSON object is replaced by an empty one, and so is any intermediate
    value that is not an object; all other keys are kept untouched.
    """
    merged: dict[str, object] = copy.deepcopy(existing) if isinstance(existing, dict) else {}
    for dotted, value in sets:
        node = merged
        keys = dotted.split(".")
        if WORKSPACE_KEY in keys and not workspace:
            raise ValueError(f"{dotted!r} names the workspace, and none was given")
        *parents, leaf = [workspace if key == WORKSPACE_KEY else key for key in keys]
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[leaf] = copy.deepcopy(value)
    return merged


PROVIDERS: dict[str, CredentialFormat] = {
    provider.name: provider
    for provider in (
        CredentialFormat(
            name=wire.Provider.CLAUDE_CODE,
            path=".claude/.credentials.json",
            fields=(
                Field("claudeAiOauth", Kind.OBJECT),
                Field("claudeAiOauth.accessToken", Kind.STRING),
                Field("claudeAiOauth.refreshToken", Kind.STRING),
                Field("claudeAiOauth.expiresAt", Kind.INTEGER),
                Field("claudeAiOauth.scopes", Kind.STRING_LIST),
                Field("claudeAiOauth.subscriptionType", Kind.STRING, required=False, nullable=True),
            ),
            expiry=_millis_at("claudeAiOauth.expiresAt"),
            side_files=(
                SideFile(
                    ".claude.json",
                    (
                        # Else its first-run screens: the theme, then how to log in.
                        ("hasCompletedOnboarding", True),
                        # Else its interactive UI opens on a folder trust dialog whose default
                        # answer is "No, exit".
                        (f"projects.{WORKSPACE_KEY}.hasTrustDialogAccepted", True),
                    ),
                ),
            ),
        ),
        CredentialFormat(
            name=wire.Provider.CODEX,
            path=".codex/auth.json",
            fields=(
                Field("auth_mode", Kind.STRING),
                Field("OPENAI_API_KEY", Kind.STRING, nullable=True),
                Field("tokens", Kind.OBJECT),
                Field("tokens.id_token", Kind.STRING),
                Field("tokens.access_token", Kind.STRING),
                Field("tokens.refresh_token", Kind.STRING),
                Field("tokens.account_id", Kind.STRING, required=False, nullable=True),
                Field("last_refresh", Kind.STRING),
            ),
            expiry=_jwt_exp_at("tokens.access_token"),
        ),
        CredentialFormat(
            name=wire.Provider.GEMINI_CLI,
            path=".gemini/oauth_creds.json",
            fields=(
                Field("access_token", Kind.STRING),
                Field("refresh_token", Kind.STRING),
                Field("scope", Kind.STRING, required=False),
                Field("token_type", Kind.STRING),
                Field("id_token", Kind.STRING, required=False),
                Field("expiry_date", Kind.INTEGER),
            ),
            expiry=_millis_at("expiry_date"),
            side_files=(
                SideFile(
                    ".gemini/settings.json", (("security.auth.selectedType", "oauth-personal"),)
                ),
                # Gemini runs an untrusted folder in a safe mode that ignores the folder's own
                # settings, and a headless run there exits at once (55) unless told otherwise.
                SideFile(".gemini/trustedFolders.json", ((WORKSPACE_KEY, "TRUST_FOLDER"),)),
            ),
        ),
        CredentialFormat(
            name=wire.Provider.OIDC,
            path=".config/hearth/oidc.json",
            fields=(
                Field("access_token", Kind.STRING),
                Field("refresh_token", Kind.STRING),
                Field("id_token", Kind.STRING, required=False),
                Field("expires_at", Kind.NUMBER),
                Field("issuer", Kind.STRING),
                # The public client the login used; the agent's refresh needs it.
                Field("client_id", Kind.STRING, required=False),
            ),
            expiry=_seconds_at("expires_at"),
        ),
    )
}

# The providers' wire names, in the enum's order (the agent's /health lists them).
SUPPORTED_PROVIDERS: tuple[str, ...] = tuple(provider.value for provider in wire.Provider)


def get_provider(name: str) -> CredentialFormat:
    """Look a provider up by name, or raise UnknownProvider naming the supported ones."""
    provider = PROVIDERS.get(name)
    if provider is None:
        shown = name if len(name) <= 64 else name[:64] + "..."
        supported = ", ".join(SUPPORTED_PROVIDERS)
        raise UnknownProvider(f"unknown provider {shown!r}; supported: {supported}")
    return provider

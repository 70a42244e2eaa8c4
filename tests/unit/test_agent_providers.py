"""The provider table: required fields, types, expiry parsing and side-file merge rules."""

from __future__ import annotations

import ast
import base64
import copy
import json
from pathlib import Path

import pytest

import hearth_agent
from hearth_agent import wire
from hearth_agent.errors import InvalidDocument, UnknownProvider
from hearth_agent.providers import (
    PROVIDERS,
    SUPPORTED_PROVIDERS,
    get_provider,
    jwt_expiry,
    merge_side_document,
)
from hearth_agent.vendor_catalog import vendor_login
from hearth_agent.wire import Provider


def b64url(obj: object) -> str:
    """Unpadded base64url of the JSON encoding of ``obj``."""
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def jwt(claims: dict[str, object]) -> str:
    """An unsigned JWT-shaped token carrying ``claims``."""
    return f"{b64url({'alg': 'none'})}.{b64url(claims)}.sig"


VALID: dict[str, dict[str, object]] = {
    "claude_code": {
        "claudeAiOauth": {
            "accessToken": "at",
            "refreshToken": "rt",
            "expiresAt": 1_800_000_000_000,
            "scopes": ["user:inference"],
            "subscriptionType": "pro",
        }
    },
    "codex": {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": jwt({"sub": "u"}),
            "access_token": jwt({"exp": 1_750_000_000}),
            "refresh_token": "rt",
            "account_id": None,
        },
        "last_refresh": "2026-01-01T00:00:00Z",
    },
    "gemini_cli": {
        "access_token": "at",
        "refresh_token": "rt",
        "scope": "openid",
        "token_type": "Bearer",
        "id_token": "id",
        "expiry_date": 1_800_000_000_250,
    },
    "oidc": {
        "access_token": "at",
        "refresh_token": "rt",
        "id_token": "id",
        "expires_at": 1_800_000_000,
        "issuer": "https://issuer.test",
    },
}

REQUIRED: list[tuple[str, str]] = [
    ("claude_code", "claudeAiOauth"),
    ("claude_code", "claudeAiOauth.accessToken"),
    ("claude_code", "claudeAiOauth.refreshToken"),
    ("claude_code", "claudeAiOauth.expiresAt"),
    ("claude_code", "claudeAiOauth.scopes"),
    ("codex", "auth_mode"),
    ("codex", "OPENAI_API_KEY"),
    ("codex", "tokens"),
    ("codex", "tokens.id_token"),
    ("codex", "tokens.access_token"),
    ("codex", "tokens.refresh_token"),
    ("codex", "last_refresh"),
    ("gemini_cli", "access_token"),
    ("gemini_cli", "refresh_token"),
    ("gemini_cli", "token_type"),
    ("gemini_cli", "expiry_date"),
    ("oidc", "access_token"),
    ("oidc", "refresh_token"),
    ("oidc", "expires_at"),
    ("oidc", "issuer"),
]

OPTIONAL: list[tuple[str, str]] = [
    ("claude_code", "claudeAiOauth.subscriptionType"),
    ("codex", "tokens.account_id"),
    ("gemini_cli", "scope"),
    ("gemini_cli", "id_token"),
    ("oidc", "id_token"),
]


def valid(provider: str) -> dict[str, object]:
    """A fresh copy of a valid document."""
    return copy.deepcopy(VALID[provider])


def set_at(document: dict[str, object], dotted: str, value: object) -> dict[str, object]:
    """Set (or, for the ``DELETE`` sentinel, remove) a dotted key; return the document."""
    *parents, leaf = dotted.split(".")
    node: object = document
    for key in parents:
        assert isinstance(node, dict)
        node = node[key]
    assert isinstance(node, dict)
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return document


DELETE = object()


def validation_message(provider: str, document: object) -> str:
    """The InvalidDocument message the provider raises for ``document``."""
    with pytest.raises(InvalidDocument) as caught:
        get_provider(provider).validate(document)
    return caught.value.message


def test_supported_providers_come_from_the_one_table() -> None:
    assert SUPPORTED_PROVIDERS == ("claude_code", "codex", "gemini_cli", "oidc")
    assert hearth_agent.SUPPORTED_PROVIDERS == SUPPORTED_PROVIDERS
    assert set(PROVIDERS) == set(SUPPORTED_PROVIDERS)


def test_every_provider_of_the_wire_enum_has_one_credential_format_named_by_it() -> None:
    assert tuple(member.value for member in Provider) == SUPPORTED_PROVIDERS
    assert all(PROVIDERS[member].name is member for member in Provider)


def test_the_wire_module_needs_nothing_but_the_standard_library() -> None:
    tree = ast.parse(Path(wire.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "enum"}


@pytest.mark.parametrize(
    ("provider", "display"),
    [
        ("claude_code", "~/.claude/.credentials.json"),
        ("codex", "~/.codex/auth.json"),
        ("gemini_cli", "~/.gemini/oauth_creds.json"),
        ("oidc", "~/.config/hearth/oidc.json"),
    ],
)
def test_each_provider_has_its_cli_path(provider: str, display: str) -> None:
    assert get_provider(provider).display_path == display


@pytest.mark.parametrize("provider", sorted(VALID))
def test_valid_documents_pass(provider: str) -> None:
    document = valid(provider)
    assert get_provider(provider).validate(document) is document


@pytest.mark.parametrize(("provider", "field_name"), REQUIRED)
def test_a_missing_required_field_is_named(provider: str, field_name: str) -> None:
    document = set_at(valid(provider), field_name, DELETE)
    assert validation_message(provider, document) == f"field '{field_name}' is required"


@pytest.mark.parametrize(("provider", "field_name"), OPTIONAL)
def test_optional_fields_may_be_absent(provider: str, field_name: str) -> None:
    get_provider(provider).validate(set_at(valid(provider), field_name, DELETE))


@pytest.mark.parametrize(
    ("provider", "field_name", "value", "expected"),
    [
        ("claude_code", "claudeAiOauth", [], "must be an object"),
        ("claude_code", "claudeAiOauth.accessToken", 1, "must be a string"),
        ("claude_code", "claudeAiOauth.expiresAt", "1800000000000", "must be an integer"),
        ("claude_code", "claudeAiOauth.expiresAt", 1.8e12, "must be an integer"),
        ("claude_code", "claudeAiOauth.scopes", "user:inference", "must be a list of strings"),
        ("claude_code", "claudeAiOauth.scopes", ["ok", 2], "must be a list of strings"),
        ("claude_code", "claudeAiOauth.subscriptionType", 5, "must be a string or null"),
        ("codex", "OPENAI_API_KEY", 0, "must be a string or null"),
        ("codex", "tokens", "t", "must be an object"),
        ("codex", "tokens.access_token", None, "must be a string"),
        ("codex", "tokens.account_id", 7, "must be a string or null"),
        ("gemini_cli", "expiry_date", "soon", "must be an integer"),
        ("gemini_cli", "scope", ["openid"], "must be a string"),
        ("oidc", "expires_at", "1800000000", "must be a number"),
        ("oidc", "issuer", None, "must be a string"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(
    provider: str, field_name: str, value: object, expected: str
) -> None:
    document = set_at(valid(provider), field_name, value)
    assert validation_message(provider, document) == f"field '{field_name}' {expected}"


@pytest.mark.parametrize(
    ("provider", "field_name"),
    [
        ("claude_code", "claudeAiOauth.expiresAt"),
        ("gemini_cli", "expiry_date"),
        ("oidc", "expires_at"),
    ],
)
@pytest.mark.parametrize("flag", [True, False])
def test_booleans_are_not_integers(provider: str, field_name: str, flag: bool) -> None:
    document = set_at(valid(provider), field_name, flag)
    assert f"field '{field_name}' must be" in validation_message(provider, document)


@pytest.mark.parametrize(("provider", "field_name"), [("codex", "OPENAI_API_KEY")])
def test_nullable_fields_accept_null(provider: str, field_name: str) -> None:
    get_provider(provider).validate(set_at(valid(provider), field_name, None))


def test_oidc_expiry_may_be_a_float() -> None:
    get_provider("oidc").validate(set_at(valid("oidc"), "expires_at", 1_800_000_000.5))


@pytest.mark.parametrize("document", [[], "x", 1, None, True])
def test_a_document_that_is_not_an_object_is_refused(document: object) -> None:
    assert validation_message("oidc", document) == "credential document must be a JSON object"


def test_extra_keys_are_allowed() -> None:
    document = {**valid("oidc"), "path": "/etc/passwd", "extra": {"x": 1}}
    get_provider("oidc").validate(document)


def test_unknown_provider_raises_a_404_error() -> None:
    with pytest.raises(UnknownProvider) as caught:
        get_provider("aider")
    assert caught.value.http_status == 404
    assert caught.value.code == "unknown_provider"
    assert "claude_code" in caught.value.message


# --- expiry ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("claude_code", 1_800_000_000.0),
        ("codex", 1_750_000_000.0),
        ("gemini_cli", 1_800_000_000.25),
        ("oidc", 1_800_000_000.0),
    ],
)
def test_expiry_is_read_in_unix_seconds(provider: str, expected: float) -> None:
    assert get_provider(provider).expires_at(valid(provider)) == expected


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        f"h.{b64url({'sub': 'no exp'})}.s",
        f"h.{b64url({'exp': True})}.s",
        f"h.{b64url({'exp': '1750000000'})}.s",
        f"h.{b64url([1, 2])}.s",
        "h.!!!not-base64!!!.s",
        "h.w4.s",
        42,
        None,
    ],
)
def test_codex_expiry_is_none_without_a_jwt_exp_claim(token: object) -> None:
    assert jwt_expiry(token) is None


def test_codex_expiry_reads_padded_and_float_exp_claims() -> None:
    assert jwt_expiry(jwt({"exp": 1_750_000_000.5})) == 1_750_000_000.5
    assert jwt_expiry(jwt({"exp": 1, "pad": "xx"})) == 1.0


@pytest.mark.parametrize(
    ("provider", "document"),
    [
        ("claude_code", {"claudeAiOauth": {}}),
        ("claude_code", {"claudeAiOauth": {"expiresAt": True}}),
        ("gemini_cli", {"expiry_date": None}),
        ("oidc", {"expires_at": 10**400}),
        ("codex", {"tokens": "x"}),
        ("oidc", []),
    ],
)
def test_expiry_of_a_document_the_cli_rewrote_oddly_is_none(
    provider: str, document: object
) -> None:
    assert get_provider(provider).expires_at(document) is None


# --- side-file merges --------------------------------------------------------------------------


def test_claude_side_file_sets_onboarding_and_trusts_the_workspace_keeping_other_keys() -> None:
    (side_file,) = get_provider("claude_code").side_files
    assert side_file.path == ".claude.json"
    existing = {"numStartups": 3, "hasCompletedOnboarding": False, "projects": {"/w": {"x": 1}}}

    merged = merge_side_document(existing, side_file.sets, workspace="/root/my.work")

    assert merged == {
        "numStartups": 3,
        "hasCompletedOnboarding": True,
        "projects": {"/w": {"x": 1}, "/root/my.work": {"hasTrustDialogAccepted": True}},
    }
    assert existing["hasCompletedOnboarding"] is False


def test_a_side_file_naming_the_workspace_needs_one() -> None:
    (side_file,) = get_provider("claude_code").side_files
    with pytest.raises(ValueError, match="workspace"):
        merge_side_document({}, side_file.sets)


def test_gemini_side_file_creates_nested_auth_and_keeps_siblings() -> None:
    settings, _ = get_provider("gemini_cli").side_files
    assert settings.path == ".gemini/settings.json"
    existing: dict[str, dict[str, object]] = {
        "ui": {"theme": "dark"},
        "security": {"folderTrust": {"enabled": True}},
    }

    merged = merge_side_document(existing, settings.sets)

    assert merged == {
        "ui": {"theme": "dark"},
        "security": {"folderTrust": {"enabled": True}, "auth": {"selectedType": "oauth-personal"}},
    }
    assert "auth" not in existing["security"]


def test_gemini_merge_overrides_a_previous_auth_type() -> None:
    settings, _ = get_provider("gemini_cli").side_files
    existing = {"security": {"auth": {"selectedType": "gemini-api-key", "useExternal": False}}}

    merged = merge_side_document(existing, settings.sets)

    assert merged["security"] == {"auth": {"selectedType": "oauth-personal", "useExternal": False}}


def test_gemini_side_file_trusts_the_workspace_keeping_other_folders() -> None:
    _, trusted = get_provider("gemini_cli").side_files
    assert trusted.path == ".gemini/trustedFolders.json"

    merged = merge_side_document({"/srv": "DO_NOT_TRUST"}, trusted.sets, workspace="/root/w")

    assert merged == {"/srv": "DO_NOT_TRUST", "/root/w": "TRUST_FOLDER"}


def test_a_vendor_login_skips_the_same_screens_in_its_own_workdir() -> None:
    claude, gemini = vendor_login("claude_code"), vendor_login("gemini_cli")
    assert claude is not None
    assert gemini is not None
    home, work = Path("/run/login/home"), Path("/run/login/work")

    assert claude.prepare(home, work) == {
        ".claude.json": {
            "hasCompletedOnboarding": True,
            "projects": {str(work): {"hasTrustDialogAccepted": True}},
        }
    }
    # Gemini's login is what picks its auth method: only the folder is trusted up front.
    assert gemini.prepare(home, work) == {
        ".gemini/trustedFolders.json": {str(work): "TRUST_FOLDER"}
    }


@pytest.mark.parametrize("existing", [None, [], "text", 3, {"security": "broken"}])
def test_merge_replaces_values_that_are_not_objects(existing: object) -> None:
    merged = merge_side_document(existing, (("security.auth.selectedType", "oauth-personal"),))
    assert merged == {"security": {"auth": {"selectedType": "oauth-personal"}}}


def test_codex_and_oidc_have_no_side_files() -> None:
    assert get_provider("codex").side_files == ()
    assert get_provider("oidc").side_files == ()

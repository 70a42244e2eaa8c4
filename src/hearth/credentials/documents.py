"""Credential documents read as the agent reads them: strict JSON, provider rules, expiry."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from hearth.errors import InvalidInput
from hearth_agent.errors import InvalidDocument
from hearth_agent.jsontext import JsonTextError, decode_json
from hearth_agent.providers import PROVIDERS, SUPPORTED_PROVIDERS, CredentialFormat
from hearth_agent.server import MAX_BODY_BYTES
from hearth_agent.wire import Provider


@dataclass(frozen=True, kw_only=True)
class DocumentFacts:
    """What may be known about a document without keeping it: its digest and token expiry."""

    provider: Provider
    sha256: str  # of the exact bytes, as the agent reports the file it wrote
    expires_at: datetime | None  # when the access token expires; None if the document omits it


def provider_named(name: str) -> CredentialFormat:
    """The agent's provider ``name``; InvalidInput naming the supported ones otherwise."""
    provider = PROVIDERS.get(name)
    if provider is None:
        supported = ", ".join(SUPPORTED_PROVIDERS)
        raise InvalidInput(f"unknown provider {name[:64]!r}; supported: {supported}")
    return provider


def expiry_time(seconds: float | None) -> datetime | None:
    """Unix seconds as an aware UTC datetime; None when absent or outside the calendar."""
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def inspect_document(provider_name: str, data: bytes) -> DocumentFacts:
    """Check ``data`` the way the agent will before writing it, and describe it.

    The agent refuses a body that is not strict UTF-8 JSON, is over its size limit, or breaks
    the provider's field rules; refusing such a document here keeps it out of the vault
    instead of failing at delivery. Messages name fields and positions, never values.
    """
    provider = provider_named(provider_name)
    what = f"the {provider.name} credential document"
    if not isinstance(data, bytes):
        raise InvalidInput(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) > MAX_BODY_BYTES:
        raise InvalidInput(f"{what} is {len(data)} bytes; the agent accepts {MAX_BODY_BYTES}")
    try:
        document = decode_json(data)
    except JsonTextError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    try:
        provider.validate(document)
    except InvalidDocument as exc:
        raise InvalidInput(f"{what} is invalid: {exc.message}") from exc
    return DocumentFacts(
        provider=provider.name,
        sha256=hashlib.sha256(data).hexdigest(),
        expires_at=expiry_time(provider.expires_at(document)),
    )

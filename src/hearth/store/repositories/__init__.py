"""Repositories: the store's only readers and writers, returning frozen records."""

from __future__ import annotations

from hearth.store.repositories._base import Clock
from hearth.store.repositories.api_keys import ApiKeyRepo, hash_key
from hearth.store.repositories.auth_sessions import AuthSessionRepo
from hearth.store.repositories.credentials import CredentialRepo
from hearth.store.repositories.egress import EgressRepo
from hearth.store.repositories.events import EventRepo
from hearth.store.repositories.runs import RunRepo
from hearth.store.repositories.sealed import SealedRepo
from hearth.store.repositories.users import UserRepo
from hearth.store.repositories.vms import VmRepo
from hearth.store.repositories.webhooks import WebhookRepo
from hearth.store.repositories.workspaces import WorkspaceRepo

__all__ = [
    "ApiKeyRepo",
    "AuthSessionRepo",
    "Clock",
    "CredentialRepo",
    "EgressRepo",
    "EventRepo",
    "RunRepo",
    "SealedRepo",
    "UserRepo",
    "VmRepo",
    "WebhookRepo",
    "WorkspaceRepo",
    "hash_key",
]

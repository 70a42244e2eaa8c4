"""The credential service on a real database with real AES-GCM: capture, open, pull back, rotate."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from sqlalchemy import text

from hearth.bench.standins.documents import unsigned_jwt
from hearth.credentials import CredentialService, CredentialVault, DecryptionFailed
from hearth.errors import Conflict, InvalidInput, NotFound
from hearth.store import CredentialRecord, CredentialSource, Store
from hearth.store.repositories.credentials import CredentialRepo
from hearth_agent import SUPPORTED_PROVIDERS
from hearth_agent.providers import PROVIDERS
from tests.integration.store_fixtures import *  # noqa: F403

MakeDocument = Callable[..., dict[str, object]]


def encode(document: dict[str, object]) -> bytes:
    """A document as the Browser VM hands it over: pretty JSON with a trailing newline."""
    return (json.dumps(document, indent=2) + "\n").encode()


def secrets_of(document: dict[str, object]) -> list[str]:
    """Every token string in a sample document (access, refresh and id tokens)."""
    found: list[str] = []

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                walk(value, name)
        elif isinstance(node, str) and "token" in key.lower() and key != "token_type":
            found.append(node)

    walk(document)
    assert len(found) >= 2, document
    return found


def with_expiry(provider: str, document: dict[str, object], seconds: int) -> dict[str, object]:
    """``document`` with its access-token expiry set to ``seconds`` (Unix time)."""
    changed = json.loads(json.dumps(document))
    if provider == "claude_code":
        changed["claudeAiOauth"]["expiresAt"] = seconds * 1000
    elif provider == "codex":
        changed["tokens"]["access_token"] = unsigned_jwt({"exp": seconds, "jti": str(seconds)})
    elif provider == "gemini_cli":
        changed["expiry_date"] = seconds * 1000
    else:
        changed["expires_at"] = seconds
    return changed  # type: ignore[no-any-return]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """The controller's state dir, where the master key lives."""
    return tmp_path / "state"


@pytest.fixture
def vault(state_dir: Path) -> CredentialVault:
    """A vault with a freshly created key file."""
    return CredentialVault.load(state_dir)


@pytest.fixture
async def service(store: Store, vault: CredentialVault) -> CredentialService:
    """The service over a migrated store, with users alice and bob."""
    for user in ("alice", "bob"):
        await store.users.ensure(user)
    return CredentialService(store, vault)


async def raw_rows(store: Store) -> list[dict[str, object]]:
    """Every credentials row exactly as the database holds it, read with raw SQL."""
    async with store.engine.connect() as conn:
        result = await conn.execute(text("SELECT * FROM credentials"))
        return [dict(row._mapping) for row in result]


async def run_sql(store: Store, statement: str, **params: object) -> None:
    """Change rows behind the repository's back, as an attacker with database access could."""
    async with store.engine.begin() as conn:
        await conn.execute(text(statement), params)


# --- capture and open --------------------------------------------------------------------------


@pytest.mark.parametrize("provider", SUPPORTED_PROVIDERS)
async def test_a_captured_document_opens_byte_for_byte(
    service: CredentialService, vault: CredentialVault, make_document: MakeDocument, provider: str
) -> None:
    document = make_document(provider, marker="rt")
    data = encode(document)
    record = await service.capture("alice", provider, data)

    assert await service.document("alice", provider) == data
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    seconds = PROVIDERS[provider].expires_at(document)
    assert seconds is not None
    assert record.expires_at == datetime.fromtimestamp(seconds, UTC)
    assert record.source is CredentialSource.CAPTURED
    assert record.key_id == vault.current_key_id


async def test_a_new_capture_replaces_the_previous_document(
    service: CredentialService, store: Store, make_document: MakeDocument
) -> None:
    first = await service.capture("alice", "codex", encode(make_document("codex", marker="one")))
    await store.credentials.mark_delivered("alice", "codex", "vm-1")
    second_doc = encode(make_document("codex", marker="two"))
    second = await service.capture("alice", "codex", second_doc)
    assert second.id == first.id
    assert second.delivered_to_vm_id is None
    assert await service.document("alice", "codex") == second_doc


async def test_opening_a_document_never_captured_is_not_found(service: CredentialService) -> None:
    with pytest.raises(NotFound, match="user alice has no gemini_cli credentials"):
        await service.document("alice", "gemini_cli")


async def test_capturing_for_an_unknown_user_is_not_found(
    service: CredentialService, make_document: MakeDocument
) -> None:
    with pytest.raises(NotFound, match="user carol does not exist"):
        await service.capture("carol", "oidc", encode(make_document("oidc")))


def _without_refresh(doc: dict[str, object]) -> bytes:
    changed = json.loads(json.dumps(doc))
    del changed["claudeAiOauth"]["refreshToken"]
    return encode(changed)


@pytest.mark.parametrize(
    ("provider", "build", "message"),
    [
        ("claude_code", lambda d: encode(d)[:-5], "not valid JSON"),
        ("claude_code", lambda d: json.dumps([d]).encode(), "must be a JSON object"),
        ("claude_code", lambda d: b"\xef\xbb\xbf" + encode(d), "not valid JSON"),
        ("claude_code", lambda d: encode(d).replace(b"1900000000000", b"NaN"), "not valid JSON"),
        ("claude_code", _without_refresh, "field 'claudeAiOauth.refreshToken' is required"),
        ("claude_code", lambda d: encode(d) + b" " * (1024 * 1024), "the agent accepts"),
        ("aider", encode, "unknown provider 'aider'"),
        ("claude_code", lambda d: b"", "not valid JSON"),
    ],
    ids=[
        "truncated",
        "array",
        "byte-order-mark",
        "nan",
        "missing-field",
        "too-large",
        "unknown-provider",
        "empty",
    ],
)
async def test_a_document_the_agent_would_refuse_is_not_captured(
    service: CredentialService,
    store: Store,
    make_document: MakeDocument,
    provider: str,
    build: Callable[[dict[str, object]], bytes],
    message: str,
) -> None:
    document = make_document("claude_code", marker="bad")
    with pytest.raises(InvalidInput, match=message) as caught:
        await service.capture("alice", provider, build(document))
    for secret in secrets_of(document):
        assert secret not in str(caught.value)
    assert await raw_rows(store) == []


# --- what the database holds -------------------------------------------------------------------


async def test_database_rows_hold_ciphertext_only(
    service: CredentialService, store: Store, make_document: MakeDocument
) -> None:
    documents = {p: make_document(p, marker=f"raw-{p}") for p in SUPPORTED_PROVIDERS}
    for provider, document in documents.items():
        await service.capture("alice", provider, encode(document))
    await service.capture("bob", "codex", encode(make_document("codex", marker="raw-bob")))
    needles = [s for doc in documents.values() for s in secrets_of(doc)]
    needles += secrets_of(make_document("codex", marker="raw-bob"))

    rows = await raw_rows(store)
    assert len(rows) == 5
    for row in rows:
        for column, value in row.items():
            if isinstance(value, memoryview):
                value = bytes(value)
            haystack = value if isinstance(value, bytes) else str(value).encode()
            for needle in needles:
                assert needle.encode() not in haystack, (column, needle)


async def test_a_row_copied_to_another_user_does_not_open(
    service: CredentialService, store: Store, make_document: MakeDocument
) -> None:
    document = make_document("codex", marker="stolen")
    await service.capture("alice", "codex", encode(document))
    await run_sql(
        store,
        "INSERT INTO credentials (id, user_id, provider, key_id, nonce, ciphertext, sha256, "
        "expires_at, source, created_at, updated_at) "
        "SELECT 'cred_copy', 'bob', provider, key_id, nonce, ciphertext, sha256, expires_at, "
        "source, created_at, updated_at FROM credentials WHERE user_id = 'alice'",
    )
    with pytest.raises(DecryptionFailed) as caught:
        await service.document("bob", "codex")
    assert "the codex credentials of user bob" in str(caught.value)
    for secret in secrets_of(document):
        assert secret not in str(caught.value)
    assert await service.document("alice", "codex") == encode(document)


async def test_a_row_moved_to_another_provider_does_not_open(
    service: CredentialService, store: Store, make_document: MakeDocument
) -> None:
    await service.capture("alice", "oidc", encode(make_document("oidc")))
    await run_sql(store, "UPDATE credentials SET provider = 'codex' WHERE user_id = 'alice'")
    with pytest.raises(DecryptionFailed, match="the codex credentials of user alice"):
        await service.document("alice", "codex")


async def test_altered_ciphertext_in_the_database_does_not_open(
    service: CredentialService, store: Store, make_document: MakeDocument
) -> None:
    await service.capture("alice", "gemini_cli", encode(make_document("gemini_cli")))
    [row] = await raw_rows(store)
    altered = bytearray(bytes(row["ciphertext"]))  # type: ignore[arg-type]
    altered[10] ^= 0x80
    await run_sql(store, "UPDATE credentials SET ciphertext = :c", c=bytes(altered))
    with pytest.raises(DecryptionFailed, match="have been altered"):
        await service.document("alice", "gemini_cli")


async def test_an_altered_sha256_column_is_caught_on_open(
    service: CredentialService, store: Store, make_document: MakeDocument
) -> None:
    await service.capture("alice", "oidc", encode(make_document("oidc")))
    await run_sql(store, "UPDATE credentials SET sha256 = :s", s="0" * 64)
    with pytest.raises(DecryptionFailed, match="recorded sha256"):
        await service.document("alice", "oidc")


# --- summary -----------------------------------------------------------------------------------


async def test_summary_describes_every_provider_without_the_document(
    service: CredentialService, store: Store, make_document: MakeDocument
) -> None:
    claude = make_document("claude_code", marker="sum")
    codex = make_document("codex", marker="sum")
    captured = await service.capture("alice", "claude_code", encode(claude))
    await service.capture("alice", "codex", encode(codex))
    await service.capture("bob", "oidc", encode(make_document("oidc", marker="bob")))
    delivered = await store.credentials.mark_delivered("alice", "claude_code", "vm-7")

    summary = await service.summary("alice")

    assert [entry["provider"] for entry in summary] == list(SUPPORTED_PROVIDERS)
    by_provider = {entry["provider"]: entry for entry in summary}
    assert by_provider["claude_code"] == {
        "provider": "claude_code",
        "present": True,
        "sha256": captured.sha256,
        "expires_at": "2030-03-17T17:46:40+00:00",
        "source": "captured",
        "delivered_to": "vm-7",
        "delivered_at": delivered.delivered_at.isoformat() if delivered.delivered_at else None,
        "updated_at": captured.updated_at.isoformat(),
        "needs_login": False,
    }
    assert by_provider["codex"]["present"] is True
    assert by_provider["codex"]["delivered_to"] is None
    for absent in ("gemini_cli", "oidc"):  # bob's oidc document is not alice's
        assert by_provider[absent] == {
            "provider": absent,
            "present": False,
            "sha256": None,
            "expires_at": None,
            "source": None,
            "delivered_to": None,
            "delivered_at": None,
            "updated_at": None,
            "needs_login": False,
        }
    wire = json.dumps(summary)  # plain JSON types only
    for secret in secrets_of(claude) + secrets_of(codex):
        assert secret not in wire
    assert all(
        set(entry) & {"document", "ciphertext", "nonce", "key_id"} == set() for entry in summary
    )


# --- pull back ---------------------------------------------------------------------------------

BASE_EXPIRY = 1_950_000_000
VM = "vm-cli-3"


async def delivered(service: CredentialService, provider: str, document: bytes) -> None:
    """``document`` captured and delivered into ``VM``."""
    await service.capture("alice", provider, document)
    sha256 = hashlib.sha256(document).hexdigest()
    await service.mark_delivered("alice", provider, VM, sha256=sha256)


@pytest.mark.parametrize("provider", SUPPORTED_PROVIDERS)
async def test_a_pulled_back_document_with_a_later_expiry_replaces_the_stored_one(
    service: CredentialService, store: Store, make_document: MakeDocument, provider: str
) -> None:
    stored = with_expiry(provider, make_document(provider, marker="old"), BASE_EXPIRY)
    await delivered(service, provider, encode(stored))
    listed = await store.credentials.get("alice", provider)
    refreshed = encode(
        with_expiry(provider, make_document(provider, marker="new"), BASE_EXPIRY + 3600)
    )

    assert await service.pull_back("alice", provider, refreshed, vm_id=VM, listed=listed) is True

    assert await service.document("alice", provider) == refreshed
    record = await store.credentials.get("alice", provider)
    assert record is not None
    assert listed is not None
    assert record.source is CredentialSource.PULLED_BACK
    assert record.expires_at == datetime.fromtimestamp(BASE_EXPIRY + 3600, UTC)
    # That VM already holds it, from the same delivery.
    assert (record.delivered_to_vm_id, record.delivered_at) == (VM, listed.delivered_at)


@pytest.mark.parametrize("offset", [0, -1, -86400])
async def test_a_pulled_back_document_that_is_not_newer_is_ignored(
    service: CredentialService, make_document: MakeDocument, offset: int
) -> None:
    stored = encode(with_expiry("oidc", make_document("oidc", marker="keep"), BASE_EXPIRY))
    await delivered(service, "oidc", stored)
    stale = encode(with_expiry("oidc", make_document("oidc", marker="stale"), BASE_EXPIRY + offset))
    assert await service.pull_back("alice", "oidc", stale, vm_id=VM) is False
    assert await service.document("alice", "oidc") == stored


async def test_a_pulled_back_document_never_fills_an_empty_slot(
    service: CredentialService, store: Store, make_document: MakeDocument
) -> None:
    # The credential was deleted while the VM was asked: it stays deleted.
    data = encode(make_document("gemini_cli", marker="pb"))
    assert await service.pull_back("alice", "gemini_cli", data, vm_id=VM) is False
    assert await store.credentials.get("alice", "gemini_cli") is None


async def test_a_pulled_back_document_leaves_one_captured_since_it_was_listed(
    service: CredentialService, store: Store, make_document: MakeDocument
) -> None:
    # A fresh login's document replaces the old one as it is, even when the VM's refreshed
    # copy of the old one expires later.
    await delivered(service, "codex", encode(with_expiry("codex", make_document("codex"), 1)))
    listed = await store.credentials.get("alice", "codex")
    fresh = encode(with_expiry("codex", make_document("codex", marker="fresh"), BASE_EXPIRY))
    await service.capture("alice", "codex", fresh)
    refreshed = encode(with_expiry("codex", make_document("codex", marker="vm"), BASE_EXPIRY + 1))
    for seen in (listed, None):
        assert await service.pull_back("alice", "codex", refreshed, vm_id=VM, listed=seen) is False
    assert await service.document("alice", "codex") == fresh


async def test_a_pulled_back_document_without_a_readable_expiry_is_not_kept(
    service: CredentialService, make_document: MakeDocument
) -> None:
    stored = encode(make_document("codex", marker="jwt"))
    await delivered(service, "codex", stored)
    opaque = make_document("codex", marker="opaque")
    opaque["tokens"]["access_token"] = "not-a-jwt-access-token"  # type: ignore[index]
    assert await service.pull_back("alice", "codex", encode(opaque), vm_id=VM) is False
    assert await service.document("alice", "codex") == stored


async def test_a_pulled_back_document_is_checked_like_a_capture(
    service: CredentialService,
) -> None:
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        await service.pull_back("alice", "oidc", b"[]", vm_id=VM)


# --- master-key rotation -----------------------------------------------------------------------


async def capture_everything(
    service: CredentialService, make_document: MakeDocument
) -> dict[tuple[str, str], bytes]:
    """Documents for alice (every provider) and bob (two); what was captured, by owner."""
    captured: dict[tuple[str, str], bytes] = {}
    for user, providers in (("alice", SUPPORTED_PROVIDERS), ("bob", ("codex", "oidc"))):
        for provider in providers:
            data = encode(make_document(provider, marker=f"{user}-{provider}"))
            await service.capture(user, provider, data)
            captured[(user, provider)] = data
    return captured


async def assert_all_open(
    service: CredentialService, captured: dict[tuple[str, str], bytes]
) -> None:
    """Every captured document still opens to exactly what was captured."""
    for (user, provider), data in captured.items():
        assert await service.document(user, provider) == data


async def key_ids(store: Store) -> list[str]:
    """The key id of every stored document."""
    return [record.key_id for record in await store.credentials.all()]


async def test_rotation_reseals_every_document_under_the_new_key(
    service: CredentialService,
    store: Store,
    vault: CredentialVault,
    state_dir: Path,
    make_document: MakeDocument,
) -> None:
    captured = await capture_everything(service, make_document)
    old_id = vault.current_key_id
    before = {(r.user_id, r.provider): r for r in await store.credentials.all()}

    new_id, count = await service.rotate_master(state_dir)

    assert new_id != old_id
    assert count == len(captured) == 6
    assert await key_ids(store) == [new_id] * 6
    for record in await store.credentials.all():
        old = before[(record.user_id, record.provider)]
        assert record.nonce != old.nonce
        assert record.ciphertext != old.ciphertext
        assert (record.sha256, record.updated_at) == (old.sha256, old.updated_at)
    await assert_all_open(service, captured)
    # A controller started afterwards reads the keys from disk and opens everything.
    restarted = CredentialService(store, CredentialVault.load(state_dir))
    await assert_all_open(restarted, captured)
    assert await service.reencrypt_all() == 0  # idempotent


async def test_documents_keep_opening_between_the_new_key_and_the_resealing(
    service: CredentialService,
    store: Store,
    vault: CredentialVault,
    state_dir: Path,
    make_document: MakeDocument,
) -> None:
    captured = await capture_everything(service, make_document)
    old_id = vault.current_key_id
    new_id = vault.rotate(state_dir)  # the key is switched, nothing re-sealed yet

    assert await key_ids(store) == [old_id] * 6
    await assert_all_open(service, captured)
    fresh = encode(make_document("gemini_cli", marker="after-rotate"))
    assert (await service.capture("bob", "gemini_cli", fresh)).key_id == new_id
    captured[("bob", "gemini_cli")] = fresh

    assert await service.reencrypt_all() == 6  # the new capture was already under the new key
    assert await key_ids(store) == [new_id] * 7
    await assert_all_open(service, captured)


class Interrupted(Exception):
    """Stands in for the controller dying in the middle of a rotation."""


async def test_an_interrupted_rotation_leaves_everything_readable_and_resumes(
    service: CredentialService,
    store: Store,
    vault: CredentialVault,
    state_dir: Path,
    make_document: MakeDocument,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured = await capture_everything(service, make_document)
    real_reseal = CredentialRepo.reseal
    calls = 0

    async def dies_on_the_third(self: CredentialRepo, *args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Interrupted
        return await real_reseal(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CredentialRepo, "reseal", dies_on_the_third)
    with pytest.raises(Interrupted):
        await service.rotate_master(state_dir)
    monkeypatch.setattr(CredentialRepo, "reseal", real_reseal)

    new_id = vault.current_key_id
    assert (await key_ids(store)).count(new_id) == 2
    await assert_all_open(service, captured)
    # After a restart (keys from disk) the rest is re-sealed and the done ones are skipped.
    restarted = CredentialService(store, CredentialVault.load(state_dir))
    assert await restarted.reencrypt_all() == 4
    assert await key_ids(store) == [new_id] * 6
    await assert_all_open(restarted, captured)


async def test_rotation_does_not_overwrite_a_document_captured_while_it_runs(
    service: CredentialService,
    store: Store,
    state_dir: Path,
    make_document: MakeDocument,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured = await capture_everything(service, make_document)
    real_reseal = CredentialRepo.reseal
    racing = encode(make_document("claude_code", marker="captured-mid-rotation"))
    raced = False

    async def capture_first(self: CredentialRepo, record: object, **kwargs: object) -> object:
        nonlocal raced
        if not raced:
            raced = True
            # A login finishes between the rotation reading this row and re-sealing it.
            await service.capture("alice", "claude_code", racing)
        return await real_reseal(self, record, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CredentialRepo, "reseal", capture_first)
    new_id, count = await service.rotate_master(state_dir)

    assert count == 5  # alice/claude_code was re-captured under the new key instead
    captured[("alice", "claude_code")] = racing
    await assert_all_open(service, captured)
    assert await key_ids(store) == [new_id] * 6


async def test_a_document_that_does_not_open_is_reported_after_the_rest_are_resealed(
    service: CredentialService,
    store: Store,
    state_dir: Path,
    make_document: MakeDocument,
) -> None:
    captured = await capture_everything(service, make_document)
    await run_sql(
        store,
        "UPDATE credentials SET sha256 = :s WHERE user_id = 'bob' AND provider = 'codex'",
        s="f" * 64,
    )
    with pytest.raises(
        DecryptionFailed, match=r"re-encrypted 5 .* 1 could not be opened.*bob/codex"
    ):
        await service.rotate_master(state_dir)
    del captured[("bob", "codex")]
    await assert_all_open(service, captured)


async def test_a_document_that_keeps_changing_is_reported_after_the_rest_are_resealed(
    service: CredentialService, store: Store, state_dir: Path, make_document: MakeDocument
) -> None:
    reseal = CredentialRepo.reseal

    async def alice_codex_keeps_changing(
        repo: CredentialRepo, record: CredentialRecord, **kwargs: object
    ) -> object:
        if (record.user_id, record.provider) == ("alice", "codex"):
            return None  # someone wrote it again just before, every time
        return await reseal(repo, record, **kwargs)  # type: ignore[arg-type]

    captured = await capture_everything(service, make_document)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CredentialRepo, "reseal", alice_codex_keeps_changing)
        with pytest.raises(Conflict, match=r"re-encrypted 5 .* 1 kept changing.*alice/codex"):
            await service.rotate_master(state_dir)
    new_key = CredentialVault.load(state_dir).current_key_id
    assert (await key_ids(store)).count(new_key) == 5
    await assert_all_open(service, captured)


# --- logs --------------------------------------------------------------------------------------


async def test_service_logs_never_carry_tokens(
    service: CredentialService, state_dir: Path, make_document: MakeDocument
) -> None:
    documents = {p: make_document(p, marker=f"log-{p}") for p in SUPPORTED_PROVIDERS}
    with structlog.testing.capture_logs() as logs:
        for provider, document in documents.items():
            await service.capture("alice", provider, encode(document))
            await service.document("alice", provider)
        sha256 = hashlib.sha256(encode(documents["oidc"])).hexdigest()
        await service.mark_delivered("alice", "oidc", VM, sha256=sha256)
        await service.pull_back(
            "alice", "oidc", encode(with_expiry("oidc", documents["oidc"], 2**31)), vm_id=VM
        )
        await service.rotate_master(state_dir)
        await service.summary("alice")
    assert {"credential_captured", "credential_pulled_back", "credentials_reencrypted"} <= {
        entry["event"] for entry in logs
    }
    rendered = repr(logs)
    for document in documents.values():
        for secret in secrets_of(document):
            assert secret not in rendered

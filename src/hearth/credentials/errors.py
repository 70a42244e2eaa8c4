"""Errors of the credential vault; ``hearth.errors`` draws them in the whole tree.

    HearthError
    └── CredentialError              the credential vault (500)
        └── DecryptionFailed         a sealed document does not open: other user/provider, altered
            └── UnknownMasterKey     the document was sealed under a key the keyring lacks

Key configuration problems (bad ``HEARTH_MASTER_KEY``, an insecure key file) are ``ConfigError``.
Messages name users, providers and key ids, never key material or document contents.
"""

from __future__ import annotations

from hearth.errors import HearthError


class CredentialError(HearthError):
    """Something went wrong in the credential vault."""

    code = "credential_error"
    http_status = 500


class DecryptionFailed(CredentialError):
    """A sealed document did not authenticate: sealed for another user or provider, or altered."""

    code = "credential_decrypt_failed"
    http_status = 500


class UnknownMasterKey(DecryptionFailed):
    """The document was sealed under a master key that is neither current nor in the keyring."""

    code = "master_key_unknown"
    http_status = 500


def reseal_incomplete(what: str, resealed: int, failed: list[str]) -> DecryptionFailed:
    """The error of a re-seal that could not open ``failed`` (named, the first ten) after
    re-sealing ``resealed`` of ``what``."""
    named = ", ".join(failed[:10]) + (", ..." if len(failed) > 10 else "")
    return DecryptionFailed(
        f"re-encrypted {resealed} {what}, but {len(failed)} could not be opened and keep their "
        f"old keys: {named}"
    )

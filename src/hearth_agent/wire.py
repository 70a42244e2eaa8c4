"""What the controller and the agent both name on the wire; stdlib only, so the controller may
import it while the agent still imports nothing of ``hearth``."""

from __future__ import annotations

from enum import StrEnum

# How long one chunk of a file transfer may take, either way: the controller's client waits
# this long for the agent, and the agent's socket for the controller (a user's slow upload or
# download is passed through chunk by chunk).
FILE_CHUNK_TIMEOUT_S = 120.0


class Provider(StrEnum):
    """A CLI whose credentials Hearth keeps; the value is its name in JSON, URLs and the store.

    A new member also needs a store migration that widens ``ck_credentials_provider`` (a test of
    the schema says so) and an entry in the agent's credential formats (``providers.PROVIDERS``).
    """

    CLAUDE_CODE = "claude_code"  # Anthropic's Claude Code: ~/.claude/.credentials.json
    CODEX = "codex"  # OpenAI's Codex CLI: ~/.codex/auth.json
    GEMINI_CLI = "gemini_cli"  # Google's Gemini CLI: ~/.gemini/oauth_creds.json
    OIDC = "oidc"  # tokens from an operator's own OpenID Connect issuer, for tools that read them

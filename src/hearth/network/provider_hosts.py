"""Which hosts each vendor CLI needs to run, logged in, and the environment that keeps it quiet.

A CLI VM reaches the network only through an allowlisting CONNECT proxy; by default it may reach
the API hosts of the providers delivered into it and nothing else. ``PROVIDER_API_HOSTS`` is that
list per provider: what a CLI run headless (``claude -p``, ``codex exec``, ``gemini -p``) with the
OAuth credential a login wrote (Claude Pro/Max, ChatGPT, Google; not API keys) cannot work
without -- the model API, the token refresh, and the calls it refuses to start without. It is not
the login's list (``hearth.auth.providers.VENDOR_EGRESS``): sign-in pages and their static hosts
are left out. Telemetry, update checks and crash reports are left out too; the CLIs run without
them, and ``QUIET_ENV`` holds the variables that stop them from trying.

Read from the CLIs pinned in hearth/images/vendor/ (claude-code 2.1.332, a Bun binary: its
embedded JavaScript read with ``strings``; codex 0.171.0, a Rust binary, with ``strings``;
gemini-cli 0.61.0, JavaScript bundles); claude's function names below are the minified ones of
that build. Entries use the syntax of ``hearth.network.allowlist``: exact hosts, port 443, no
wildcards.
"""

from __future__ import annotations

from collections.abc import Iterable

from hearth_agent.wire import Provider

PROVIDER_API_HOSTS: dict[Provider, tuple[str, ...]] = {
    Provider.CLAUDE_CODE: (
        # BASE_API_URL "https://api.anthropic.com": the model API (/v1/messages) and what a
        # claude.ai login calls beside it: /api/oauth/profile (plan and rate-limit tier, fetched
        # again after a refresh), /api/claude_cli/bootstrap, /api/claude_code/settings (managed
        # settings), GrowthBook's flags (its apiHost is "https://api.anthropic.com/") and the
        # first-party event log (/api/event_logging/v2/batch).
        "api.anthropic.com",
        # TOKEN_URL "https://platform.claude.com/v1/oauth/token": the refresh (grant_type
        # refresh_token) once the access token expires.
        "platform.claude.com",
        # Left out: claude.ai and claude.com (the sign-in); downloads.claude.ai,
        # releases.claude.com and storage.googleapis.com (updates, the official plugin
        # marketplace; its model catalog is never read under a claude.ai login);
        # http-intake.logs.us5.datadoghq.com (Datadog event logs); mcp-proxy.anthropic.com (the
        # account's claude.ai connectors); bun.report (the Bun runtime's crash reports).
    ),
    Provider.CODEX: (
        # chatgpt_base_url "https://chatgpt.com/backend-api/": under a ChatGPT login the model API
        # is "https://chatgpt.com/backend-api/codex" (/responses), beside the plan's usage limits
        # (/wham/usage) and the model list. chatgpt.com also serves anyone's shared conversations
        # and GPTs, which is why the login's list leaves it out; a ChatGPT-login codex has its
        # model API nowhere else, so the run cannot do without it.
        "chatgpt.com",
        # "https://auth.openai.com/oauth/token": the refresh of the ChatGPT tokens (the URL that
        # CODEX_REFRESH_TOKEN_URL_OVERRIDE replaces).
        "auth.openai.com",
        # Left out: api.openai.com (the API-key provider's "https://api.openai.com/v1");
        # ab.chatgpt.com (metrics, "https://ab.chatgpt.com/otlp/v1/metrics");
        # o33249.ingest.us.sentry.io (/feedback uploads); api.github.com, registry.npmjs.org and
        # formulae.brew.sh (the TUI's update check); raw.githubusercontent.com (the TUI's
        # announcement tip); persistent.oaistatic.com (the TUI's pets).
    ),
    Provider.GEMINI_CLI: (
        # CODE_ASSIST_ENDPOINT "https://cloudcode-pa.googleapis.com" (v1internal): the model API
        # under a Google login (:generateContent, :streamGenerateContent) and what the CLI will
        # not start without: :loadCodeAssist (setupUser, the user's project and tier), then
        # :retrieveUserQuota, :listExperiments, :fetchAdminControls.
        "cloudcode-pa.googleapis.com",
        # google-auth-library's "https://oauth2.googleapis.com/token" (the refresh) and
        # ".../tokeninfo": each start checks the cached credentials with getTokenInfo and, if
        # that fails, falls back to a login, which a headless run cannot do.
        "oauth2.googleapis.com",
        # Left out: play.googleapis.com (Clearcut usage statistics, "https://play.googleapis.com/
        # log"); www.googleapis.com (/oauth2/v2/userinfo, only to show the account's email: a
        # failure is logged and the run goes on; the host also serves Cloud Storage);
        # registry.npmjs.org (the update check, interactive UI only).
    ),
    # An OIDC credential is for the user's own tools: it brings no API host with it.
    Provider.OIDC: (),
}

# Environment that stops each CLI's optional traffic, so that a run behind the allowlist does not
# spend time on, or log errors about, hosts the proxy refuses. Only variables the pinned CLI reads.
QUIET_ENV: dict[Provider, dict[str, str]] = {
    Provider.CLAUDE_CODE: {
        # not() answers "essential-traffic" when it is set: telemetry off (qv(), vg()), no
        # auto-update (dy() via a0e()), and yt() turns off feedback, plugin fetches, uploads and
        # the rest of what the CLI calls "nonessential traffic".
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # Also read on their own, so the intent survives a change in what the one above covers:
        # qv() turns telemetry (Datadog, event logging) off for DISABLE_TELEMETRY;
        # DISABLE_ERROR_REPORTING stops error reports; dy() names DISABLE_AUTOUPDATER.
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        # Uvn(): skip fetching the official plugin marketplace (downloads.claude.ai, else GitHub).
        "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
        # RSo(): no claude.ai connectors, which would connect through mcp-proxy.anthropic.com.
        "ENABLE_CLAUDEAI_MCP_SERVERS": "false",
        # The Bun runtime's crash report upload (bun.report); "0" turns it off.
        "BUN_ENABLE_CRASH_REPORTING": "0",
    },
    # codex reads no variable for this. Its switch is a config key, which its own help text
    # gives ("Users can still opt out by setting this in their config.toml: [analytics]
    # enabled = false"; or `codex exec -c analytics.enabled=false`): it turns off the metrics
    # exporter (ab.chatgpt.com) and the analytics events. codex exec does not check for updates;
    # the TUI does (check_for_update_on_startup = false).
    Provider.CODEX: {},
    Provider.GEMINI_CLI: {
        # parseBooleanEnvFlag(env["GEMINI_TELEMETRY_ENABLED"]) wins over settings.json: no
        # OpenTelemetry export (off by default; this keeps a settings file from turning it on).
        # Usage statistics (Clearcut, play.googleapis.com) have no variable: settings.json
        # {"privacy": {"usageStatisticsEnabled": false}} is the only switch.
        "GEMINI_TELEMETRY_ENABLED": "false",
    },
    Provider.OIDC: {},
}


def quiet_env(providers: Iterable[Provider] = tuple(Provider)) -> dict[str, str]:
    """``QUIET_ENV`` of ``providers`` in one environment (every CLI's by default: a terminal's
    shell may start any of them). What a vendor CLI started in a VM gets beside the guest's TLS
    trust and the egress proxy (``hearth.control.execs.ExecService.start``), for a run and in
    the terminal alike."""
    return {name: value for provider in providers for name, value in QUIET_ENV[provider].items()}

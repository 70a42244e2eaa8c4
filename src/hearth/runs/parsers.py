"""Which stream parser reads which provider's CLI."""

from __future__ import annotations

from hearth.errors import InvalidInput
from hearth.runs.claude import ClaudeStream
from hearth.runs.codex import CodexStream
from hearth.runs.events import StreamParser
from hearth.runs.gemini import GeminiStream
from hearth_agent.wire import Provider

_PARSERS: dict[Provider, type[ClaudeStream | CodexStream | GeminiStream]] = {
    Provider.CLAUDE_CODE: ClaudeStream,
    Provider.CODEX: CodexStream,
    Provider.GEMINI_CLI: GeminiStream,
}


def parser_for(provider: Provider) -> StreamParser:
    """A new parser for one run of ``provider``'s CLI; InvalidInput for one without a CLI."""
    parser = _PARSERS.get(provider)
    if parser is None:
        raise InvalidInput(f"provider {provider.value!r} has no CLI to run")
    return parser()

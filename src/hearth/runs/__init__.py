"""Runs: a vendor CLI's headless mode in a CLI VM, its command line and its event stream."""

from hearth.runs.commands import RunCommand, run_command
from hearth.runs.events import RunEvent, RunEventType, RunFailure, StreamParser
from hearth.runs.parsers import parser_for

__all__ = [
    "RunCommand",
    "RunEvent",
    "RunEventType",
    "RunFailure",
    "StreamParser",
    "parser_for",
    "run_command",
]

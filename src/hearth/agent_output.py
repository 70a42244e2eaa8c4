"""The bytes of an output event a VM's agent sends (a command's, a run's, a terminal's).

The agent sends output as text, or as base64 where it is not UTF-8. A guest's root may replace
its agent and send either garbled: that is the agent's error (``GarbledOutput``), never the
command's, and never an internal error of the controller's.
"""

from __future__ import annotations

import base64
from typing import Any

from hearth.agent_client import AgentError
from hearth.runs.events import capped


class GarbledOutput(AgentError):
    """Output from the agent that holds no bytes: its error, which ends what the output was of
    (not a break in its event stream, read on from after it)."""

    code = "agent_error"
    http_status = 502


def output_bytes(data: dict[str, Any], agent: str = "the VM's agent") -> bytes:
    """An output event's bytes (text or base64 on the wire); ``GarbledOutput``, naming
    ``agent``, if it holds none (base64 that is not, text no UTF-8 can encode)."""
    text = str(data.get("data", ""))
    try:
        if data.get("encoding") == "base64":
            return base64.b64decode(text, validate=True)
        return text.encode("utf-8")
    except ValueError as exc:  # binascii.Error, UnicodeEncodeError
        raise GarbledOutput(
            f"{agent} sent output that is no bytes ({capped(str(exc), 200)})"
        ) from exc

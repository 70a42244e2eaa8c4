"""A VM's agent's answers about its credential documents, checked before anyone reads them.

Whatever answers on the agent's port is the VM root's choice: facts about a provider other than
the one asked, fields of other types, a document whose text does not encode (a lone surrogate)
or does not serialise, are the agent's error (``AgentError`` naming the VM), never a
``ValueError`` or ``KeyError`` that ends the loop or the route that asked.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hearth.agent_client import AgentClient, AgentError

# The facts' fields besides ``provider`` and ``present``, and the JSON types each may have
# (every one may be null, or absent in an older agent's answer).
_FACT_TYPES: dict[str, tuple[type, ...]] = {
    "sha256": (str,),
    "bytes": (int,),
    "mtime": (int, float),
    "mode": (str,),
    "expires_at": (int, float),
}


def checked_facts(agent: AgentClient, provider: str, answer: dict[str, Any]) -> dict[str, Any]:
    """``answer`` to ``GET /credentials/{provider}`` if it is facts about that provider, each
    field of its type (numbers finite); AgentError otherwise."""
    if answer.get("provider") != provider:
        raise _unexpected(agent, f"GET /credentials/{provider}", "facts about another provider")
    if not isinstance(answer.get("present"), bool):
        raise _unexpected(agent, f"GET /credentials/{provider}", "no true or false 'present'")
    for name, types in _FACT_TYPES.items():
        value = answer.get(name)
        if value is not None and not _of_type(value, types):
            raise _unexpected(agent, f"GET /credentials/{provider}", f"a malformed {name!r}")
    return answer


def written_sha256(agent: AgentClient, provider: str, answer: dict[str, Any]) -> str:
    """The sha256 the agent reports for the document it wrote (``PUT /credentials/{provider}``);
    AgentError if its answer holds none."""
    sha256 = answer.get("sha256")
    if not isinstance(sha256, str):
        raise _unexpected(agent, f"PUT /credentials/{provider}", "no sha256")
    return sha256


def document_bytes(agent: AgentClient, provider: str, answer: dict[str, Any]) -> bytes | None:
    """The document an answer to ``GET /credentials/{provider}?content=true`` holds: its file's
    own bytes (``content``), else the parsed ``document`` serialised (an older agent), else
    None; AgentError for a ``content`` that is no string or does not encode as UTF-8, or a
    ``document`` that does not serialise."""
    request = f"GET /credentials/{provider}?content=true"
    content, document = answer.get("content"), answer.get("document")
    if content is not None and not isinstance(content, str):
        raise _unexpected(agent, request, "a 'content' that is not a string")
    try:
        if content is not None:
            return content.encode()
        if document is None:
            return None
        return json.dumps(document, indent=2).encode() + b"\n"
    except (UnicodeEncodeError, RecursionError) as exc:  # a lone surrogate; nested past the stack
        raise _unexpected(agent, request, "a document that cannot be kept") from exc


def _of_type(value: object, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) or not isinstance(value, types):  # JSON true is no number
        return False
    return not isinstance(value, float) or math.isfinite(value)  # json.loads takes NaN


def _unexpected(agent: AgentClient, request: str, what: str) -> AgentError:
    return agent.error(f"{agent.name} answered {request} with {what}")

"""``AgentClient``'s credential calls take what answers on a VM's agent port as the VM root's
choice: facts about another provider or of other types, a document whose text does not encode
(a lone surrogate), an answer to a write without its sha256, are each an AgentError naming the
VM (which its callers log, or answer 502), never a ValueError or KeyError. Against a loopback
stand-in that answers each request with the JSON text given for its path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from hearth.agent_client import AgentClient, AgentError
from tests.loopback_api import LOOPBACK, QuietHandler, listening

VM = "the agent of VM vm-1"
GOOD_FACTS = {
    "provider": "codex",
    "present": True,
    "sha256": "ab" * 32,
    "bytes": 120,
    "mtime": 1_900_000_000.5,
    "mode": "0600",
    "expires_at": 1_900_000_000,
}


@pytest.fixture(scope="module")
def agent_port() -> Iterator[tuple[dict[str, str], str]]:
    """A stand-in agent on loopback answering each request target (path and query) with 200
    and the JSON text its table gives for it, written as it is; the table and its URL."""
    table: dict[str, str] = {}

    class Handler(QuietHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.answer(200, table[self.path].encode(), {"content-type": "application/json"})

        do_GET = do_PUT = _answer

    with listening(ThreadingHTTPServer(LOOPBACK, Handler)) as url:
        yield table, url


@pytest.fixture
def answers(agent_port: tuple[dict[str, str], str]) -> dict[str, str]:
    """The stand-in's table, empty: what it answers in this test."""
    table = agent_port[0]
    table.clear()
    return table


@pytest.fixture
def agent(agent_port: tuple[dict[str, str], str]) -> AgentClient:
    """The controller's client of the stand-in, as VM ``vm-1``'s agent."""
    return AgentClient(agent_port[1], "token", vm_id="vm-1")


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        # JSON's escape of a lone surrogate: a str that has no UTF-8.
        ('{"content": "\\ud800"}', "a document that cannot be kept"),
        ('{"content": "{}\\udfff", "document": {}}', "a document that cannot be kept"),
        ('{"content": 5}', "a 'content' that is not a string"),
    ],
    ids=["lone-surrogate", "trailing-surrogate", "not-a-string"],
)
async def test_a_document_that_cannot_be_kept_is_the_agents_error(
    agent: AgentClient, answers: dict[str, str], answer: str, what: str
) -> None:
    answers["/credentials/oidc?content=true"] = answer
    with pytest.raises(AgentError) as raised:
        await agent.credentials_document("oidc")
    assert raised.value.message == f"{VM} answered GET /credentials/oidc?content=true with {what}"


async def test_a_document_is_its_content_or_an_older_agents_parsed_document(
    agent: AgentClient, answers: dict[str, str]
) -> None:
    answers["/credentials/codex?content=true"] = json.dumps({"content": '{"a": "é"}\n'})
    answers["/credentials/oidc?content=true"] = json.dumps({"document": {"a": 1}})
    assert await agent.credentials_document("codex") == '{"a": "é"}\n'.encode()
    assert await agent.credentials_document("oidc") == b'{\n  "a": 1\n}\n'


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"provider": "x"}, "facts about another provider"),
        ({"provider": "claude_code"}, "facts about another provider"),
        ({"present": None}, "no true or false 'present'"),
        ({"present": "yes"}, "no true or false 'present'"),
        ({"sha256": 7}, "a malformed 'sha256'"),
        ({"bytes": True}, "a malformed 'bytes'"),
        ({"mode": ["0600"]}, "a malformed 'mode'"),
        ({"expires_at": "soon"}, "a malformed 'expires_at'"),
        ({"expires_at": float("nan")}, "a malformed 'expires_at'"),
        ({"expires_at": float("inf")}, "a malformed 'expires_at'"),
    ],
)
async def test_facts_of_another_provider_or_shape_are_the_agents_error(
    agent: AgentClient, answers: dict[str, str], change: dict[str, object], what: str
) -> None:
    facts = {**GOOD_FACTS, **change}
    answers["/credentials/codex"] = json.dumps({k: v for k, v in facts.items() if v is not None})
    with pytest.raises(AgentError) as raised:
        await agent.credentials_facts("codex")
    assert raised.value.message == f"{VM} answered GET /credentials/codex with {what}"


async def test_facts_as_the_agent_gives_them_pass(
    agent: AgentClient, answers: dict[str, str]
) -> None:
    answers["/credentials/codex"] = json.dumps(GOOD_FACTS)
    assert await agent.credentials_facts("codex") == GOOD_FACTS
    absent = {"provider": "codex", "present": False, "sha256": None, "bytes": None}
    answers["/credentials/codex"] = json.dumps(absent)  # an older agent's, fewer fields
    assert await agent.credentials_facts("codex") == absent


@pytest.mark.parametrize("answer", ["{}", '{"sha256": null}', '{"sha256": ["ab"]}'])
async def test_a_write_answered_without_its_sha256_is_the_agents_error(
    agent: AgentClient, answers: dict[str, str], answer: str
) -> None:
    answers["/credentials/codex"] = answer
    with pytest.raises(AgentError) as raised:
        await agent.put_credentials("codex", b"{}")
    assert raised.value.message == f"{VM} answered PUT /credentials/codex with no sha256"

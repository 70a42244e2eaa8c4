"""The credential routes over a CLI VM whose agent port answers as its root chooses, in process
on SQLite and PostgreSQL: the VM is a real one of the controller's (its agent a real process on
loopback) until the test points its agent address at a stand-in on loopback, as a VM whose root
replaced the agent would answer.

``GET /api/vms/{id}/credentials`` answers such facts with 502 ``agent_error`` (not 500), and
``DELETE /api/credentials/{user}/{provider}`` goes on past a document it cannot keep: removed
from the VM and the vault all the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.bench.standins.documents import sample_document
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, served

Answer = Callable[[str, bool], str]


def agent_port(facts: Answer, *, asked: list[str] | None = None) -> Starlette:
    """A stand-in on a VM's agent port: ``GET /credentials/{provider}[?content=true]`` gets 200
    and ``facts(provider, content)``, a DELETE says it deleted (``asked`` records them)."""

    async def credentials(request: Request) -> Response:
        provider = request.path_params["provider"]
        if asked is not None:
            asked.append(f"{request.method} {request.url.path}")
        if request.method == "DELETE":
            return Response('{"deleted": true}', media_type="application/json")
        content = request.query_params.get("content") == "true"
        return Response(facts(provider, content), media_type="application/json")

    return Starlette(
        routes=[Route("/credentials/{provider}", credentials, methods=["GET", "DELETE"])]
    )


@pytest.mark.parametrize(
    "facts",
    [
        '{"provider": "x", "present": true}',
        '{"provider": "%s"}',
        '{"provider": "%s", "present": true, "expires_at": NaN}',
        '{"provider": "%s", "present": true, "sha256": {"a": 1}}',
    ],
    ids=["unknown-provider", "no-present", "nan-expiry", "sha256-object"],
)
async def test_unexpected_facts_from_a_vms_agent_port_are_a_502_agent_error(
    agent_api: Api, facts: str
) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")

    def answer(provider: str, content: bool) -> str:
        return facts.replace("%s", provider)

    async with served(agent_port(answer)) as url:  # type: ignore[arg-type]
        api.ctl.vms.live_vm(vm_id).agent_url = url
        listing = await api.client.get(f"/api/vms/{vm_id}/credentials", headers=api.headers())
    error = assert_error(listing, 502, "agent_error")
    assert vm_id in error["message"]
    assert url not in error["message"]


async def test_a_delete_goes_on_past_a_vm_answering_a_document_that_cannot_be_kept(
    agent_api: Api,
) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")
    document = json.dumps(sample_document("codex", "ann")).encode()
    await api.ctl.credentials.capture("ann", "codex", document)

    def answer(provider: str, content: bool) -> str:
        if content:  # JSON's escape of a lone surrogate: text that has no UTF-8
            return '{"content": "\\ud800"}'
        return json.dumps({"provider": provider, "present": provider == "codex"})

    asked: list[str] = []
    async with served(agent_port(answer, asked=asked)) as url:  # type: ignore[arg-type]
        api.ctl.vms.live_vm(vm_id).agent_url = url
        deleted = await api.client.delete("/api/credentials/ann/codex", headers=api.headers())
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["removedFrom"] == [vm_id]
    assert "DELETE /credentials/codex" in asked
    assert await api.ctl.store.credentials.get("ann", "codex") is None

"""``LocalNode.probe_agent`` against a VM's agent port answering as its root chooses: a stand-in
on loopback. Whatever the guest puts in its ``/health`` answer (its status, its version) reaches
the heartbeat's and the agent update's logs, rows and events only cut (``guest_text``), never
whole (megabytes each probe).
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hearth.agent_answers import GUEST_TEXT_CHARS
from hearth.agent_client import AgentError
from hearth.errors import ImageNotBuilt
from hearth.images.manifest import ImageDir
from hearth.node.local import LocalNode
from hearth.vm.types import Vm, VmSpec, VmType
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import served

GUEST_TEXT = "A" * 1_000_000


class NoImages:
    """A catalog with no image built (probing an agent needs none)."""

    def image_for(self, vm_type: VmType) -> ImageDir:
        raise ImageNotBuilt(f"no image for {vm_type.value}")


def agent_port(health: dict[str, Any]) -> Starlette:
    """A stand-in on a VM's agent port answering ``/health`` with ``health``."""

    async def answer(request: Request) -> Response:
        return JSONResponse(health)

    return Starlette(routes=[Route("/health", answer)])


async def probe(health: dict[str, Any]) -> str:
    """What ``probe_agent`` makes of a VM whose agent answers ``/health`` with ``health``."""
    node = LocalNode(FakeBackend(), NoImages())  # type: ignore[arg-type]
    async with served(agent_port(health)) as url:  # type: ignore[arg-type]
        vm = Vm(id="vm-probed", spec=VmSpec(), backend="fake", agent_url=url)
        return await node.probe_agent(vm, timeout_s=10.0)


async def test_a_guests_status_is_cut_in_the_error_of_its_probe() -> None:
    with pytest.raises(AgentError) as raised:
        await probe({"status": GUEST_TEXT, "version": "1.0.0"})

    message = raised.value.message
    assert message.startswith("VM vm-probed: its agent answers status 'AAAA")
    assert len(message) < GUEST_TEXT_CHARS + 200


async def test_a_guests_version_is_cut_in_what_its_probe_answers() -> None:
    version = await probe({"status": "ok", "version": GUEST_TEXT})

    assert version.startswith("A" * 100)
    assert len(version) < GUEST_TEXT_CHARS + 100


async def test_a_short_status_and_version_are_answered_as_they_are() -> None:
    assert await probe({"status": "ok", "version": "1.2.3"}) == "1.2.3"
    with pytest.raises(AgentError, match=r"its agent answers status 'starting'$"):
        await probe({"status": "starting"})

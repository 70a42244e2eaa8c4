"""``HEARTH_OIDC_UPSTREAM_PORT``: an issuer on the host's loopback that guests reach at a
forwarded 10.0.2.x address (``HEARTH_OIDC_ISSUER`` names that address). A CLI VM's agent
refreshes its ``oidc`` document there through the VM's egress path, built from the settings as
the controller builds it, and the controller revokes a deleted document's refresh token there
from the host. Against a stand-in issuer on 127.0.0.1 that names itself by the guest address;
nothing is dialled anywhere else (the egress proxy refuses a private address it has no pin for,
and the revocation's transport refuses any host but loopback).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import hearth.credentials.revoke as revoke
from hearth.config import Settings
from hearth.control.network import provider_hosts
from hearth.httpclient import async_client
from hearth.runtime import open_node
from hearth_agent.wire import Provider
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import served
from tests.integration.test_agent_oidc_refresh import configure, refresher_holding

GUEST_ISSUER = "http://10.0.2.100:9000"  # what guests dial; only the forward leads there


async def form(request: Request) -> dict[str, str]:
    """A request's form body (``application/x-www-form-urlencoded``)."""
    return dict(parse_qsl((await request.body()).decode()))


@dataclass
class StandInIssuer:
    """What the stand-in issuer was asked: each request's method, path and Host header, and the
    tokens revoked."""

    asked: list[tuple[str, str, str]] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def discovery(request: Request) -> Response:
            self._note(request)
            return JSONResponse(
                {
                    "issuer": GUEST_ISSUER,
                    "authorization_endpoint": f"{GUEST_ISSUER}/auth",
                    "token_endpoint": f"{GUEST_ISSUER}/token",
                    "revocation_endpoint": f"{GUEST_ISSUER}/token/revocation",
                }
            )

        async def token(request: Request) -> Response:
            self._note(request)
            assert (await form(request))["grant_type"] == "refresh_token"
            fresh = {"access_token": "a2", "refresh_token": "r2", "token_type": "Bearer"}
            return JSONResponse({**fresh, "expires_in": 3600})

        async def revocation(request: Request) -> Response:
            self._note(request)
            self.revoked.append((await form(request))["token"])
            return Response(status_code=200)

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/token", token, methods=["POST"]),
                Route("/token/revocation", revocation, methods=["POST"]),
            ]
        )

    def _note(self, request: Request) -> None:
        self.asked.append((request.method, request.url.path, request.headers["host"]))


@pytest.fixture
async def issuer() -> AsyncIterator[tuple[StandInIssuer, Settings]]:
    """The stand-in issuer on loopback, and settings naming it as guests reach it."""
    stand_in = StandInIssuer()
    async with served(stand_in.app()) as url:  # type: ignore[arg-type]
        env = {
            "HEARTH_OIDC_ISSUER": GUEST_ISSUER,
            "HEARTH_OIDC_CLIENT_ID": "hearth-test",
            "HEARTH_OIDC_UPSTREAM_PORT": url.rsplit(":", 1)[1],
        }
        yield stand_in, Settings.from_env(env)


async def test_a_cli_vms_agent_refreshes_at_the_forwarded_issuer_through_its_egress_path(
    issuer: tuple[StandInIssuer, Settings], tmp_path: Path
) -> None:
    stand_in, settings = issuer
    # The path a CLI VM holding an oidc document gets: the node's proxy, the issuer allowed.
    node = open_node(settings.with_overrides(state_dir=tmp_path), backend=FakeBackend())
    path = await node.open_egress(provider_hosts(settings)[Provider.OIDC], owner="vm-cli")
    document: dict[str, Any] = {
        "access_token": "a1",
        "refresh_token": "r1",
        "expires_at": time.time() + 30,
        "issuer": GUEST_ISSUER,
        "client_id": "hearth-test",
    }
    refresher, _ = refresher_holding(tmp_path / "home", document)
    try:
        assert configure(refresher, {"proxy": f"http://127.0.0.1:{path.port}"}) == 200
        assert await asyncio.to_thread(refresher.check_once) == "refreshed"
    finally:
        await path.close()
    assert stand_in.asked == [
        ("GET", "/.well-known/openid-configuration", "10.0.2.100:9000"),
        ("POST", "/token", "10.0.2.100:9000"),
    ]
    assert refresher.status()["refreshes"] == 1


class LoopbackOnly(httpx.AsyncBaseTransport):
    """Dials 127.0.0.1 only; any other host is refused before a packet leaves."""

    def __init__(self) -> None:
        self.real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "127.0.0.1":
            raise httpx.ConnectError(f"not dialled: {request.url.host}", request=request)
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


async def test_the_revocation_dials_the_forwarded_issuer_on_the_hosts_loopback(
    issuer: tuple[StandInIssuer, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in, settings = issuer
    monkeypatch.setattr(
        revoke, "async_client", lambda **options: async_client(transport=LoopbackOnly(), **options)
    )
    document = json.dumps({"refresh_token": "r1", "issuer": GUEST_ISSUER}).encode()

    assert await revoke.revoke_oidc_refresh_token(settings, document) == "revoked"
    assert stand_in.revoked == ["r1"]
    assert [host for _, _, host in stand_in.asked] == ["10.0.2.100:9000"] * 2

"""schemathesis with every check over the controller's OpenAPI, with an admin and a user key.

The app runs for real under uvicorn on loopback (in a thread, SQLite, fake VM backend: what is
tested is the API's contract, not VMs; ``tests/vm/test_api_fuzz.py`` does this against QEMU).

Excluded checks, and why:
- ``positive_data_acceptance``: schema-valid input can still be refused by the product's rules
  (a user key naming another user is 403, a second VM over the quota is 409, an unknown id is
  404); those answers are documented, not failures.
- ``negative_data_rejection``: undeclared query parameters are ignored, as HTTP APIs commonly
  do (a cache-buster must not break a client), and schemathesis counts them as schema-violating
  input. Violating bodies, paths and declared parameters are refused (400/422; wire models
  forbid unknown fields), which the other tests of the API check.
- ``use_after_free`` / ``ensure_resource_availability``: DELETE of a VM is idempotent by design
  (a destroyed VM stays readable with status ``destroyed``); DELETE of a key revokes it and the
  revoked key stays listed. Neither makes the resource vanish, which these checks assume.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import hypothesis
import pytest
import schemathesis
import uvicorn
from schemathesis.checks import CHECKS

from hearth.api.app import create_app
from hearth.config import Settings
from tests.background import in_background_loop
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import running_api

# A tar upload is bytes like any other body (the agent refuses what is not a tar: 422).
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")
schema = schemathesis.openapi.from_dict(
    create_app(Settings.from_env({"HEARTH_STATE_DIR": "/nonexistent"})).openapi()
)
EXCLUDED = {
    "positive_data_acceptance",
    "negative_data_rejection",
    "use_after_free",
    "ensure_resource_availability",
}
CHECKED = [check for check in CHECKS.get_all() if check.__name__ not in EXCLUDED]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The controller on a loopback port for the module: its URL, an admin and a user key."""
    root = tmp_path_factory.mktemp("schema")
    settings = Settings.from_env({"HEARTH_STATE_DIR": str(root / "state")})
    port = _free_port()

    @contextlib.asynccontextmanager
    async def serving() -> AsyncIterator[dict[str, str]]:
        async with running_api(settings, FakeBackend(), root / "image") as api:
            keys = {"admin": api.admin_key, "user": await api.user_key("fuzz-user")}
            server = uvicorn.Server(
                uvicorn.Config(
                    api.app, host="127.0.0.1", port=port, log_config=None, lifespan="off"
                )
            )
            task = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.02)
            try:
                yield {**keys, "url": f"http://127.0.0.1:{port}"}
            finally:
                server.should_exit = True
                await task

    with in_background_loop(serving, timeout_s=60) as found:
        yield found


@pytest.mark.parametrize("who", ["admin", "user"])
@schema.parametrize()
@hypothesis.settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_every_check_passes_with_admin_and_user_keys(
    case: schemathesis.Case, live: dict[str, str], who: str
) -> None:
    response = case.call(
        base_url=live["url"], headers={"Authorization": f"Bearer {live[who]}"}, timeout=30
    )
    case.validate_response(response, checks=CHECKED)

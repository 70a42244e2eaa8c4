"""schemathesis over the controller's own OpenAPI, with an admin key: no 5xx, every error JSON.

The controller runs for real (uvicorn in a thread, SQLite, QEMU); VMs the fuzzer manages to
create are real too, bounded by quotas (no Browser VMs, memory for a few CLI VMs).

``tests/integration/test_api_schema.py`` fuzzes the same routes in process, with every check and
both an admin and a user key, over the fake backend. What this run adds is that fuzzed requests
reach real VMs (specs QEMU boots, pauses and destroys), so it keeps a small example budget
(``MAX_EXAMPLES`` per route) rather than repeating the in-process run's breadth.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hearth.api.app import create_app
from hearth.config import Settings
from hearth.control.quotas import Quotas
from hearth.images.manifest import ImageDir
from hearth.vm.types import VmType
from tests.background import in_background_loop
from tests.vm.api_fixtures import Api, serve_app
from tests.vm.conftest import qemu_pids_under

pytestmark = [pytest.mark.slow, pytest.mark.vm]
# Per route; the breadth is in tests/integration/test_api_schema.py (see the module docstring).
MAX_EXAMPLES = 8

schema = schemathesis.openapi.from_dict(
    create_app(Settings.from_env({"HEARTH_STATE_DIR": "/nonexistent"})).openapi()
)


@pytest.fixture(scope="module")
def live_api(
    minimal_image: ImageDir, tmp_path_factory: pytest.TempPathFactory, vm_state_dir: Path
) -> Iterator[Api]:
    """A controller in a background thread for the whole module."""
    state = tmp_path_factory.mktemp("fuzz") / "state"
    settings = Settings.from_env({"HEARTH_STATE_DIR": str(state)})
    quotas = Quotas(
        per_user={VmType.CLI: 1, VmType.BROWSER: 1}, max_browser_vms=0, memory_limit_mib=1600
    )
    serving = contextlib.asynccontextmanager(serve_app)
    with in_background_loop(
        lambda: serving(
            settings,
            minimal_image=minimal_image,
            template_dir=vm_state_dir / "templates",
            quotas=quotas,
            destroy_on_exit=True,
        ),
        timeout_s=120,
    ) as api:
        yield api
    assert qemu_pids_under(state) == []


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_api_never_answers_5xx_and_errors_are_json(case: schemathesis.Case, live_api: Api) -> None:
    response = case.call(
        base_url=live_api.url,
        headers={"Authorization": f"Bearer {live_api.admin_key}"},
        timeout=120,
    )
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    # Errors are the API's JSON; the one exception is the HTTP server's own plain-text 400 for a
    # request it cannot parse (a malformed Content-Length), which never reaches the API.
    unparsable = response.status_code == 400 and response.text == "Invalid HTTP request received."
    if response.status_code >= 400 and not unparsable:
        body = response.json()
        assert set(body) == {"error"}
        assert isinstance(body["error"]["code"], str)
        assert isinstance(body["error"]["message"], str)

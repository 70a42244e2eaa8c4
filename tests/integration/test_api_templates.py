"""Templates prepared at start, in process on SQLite and PostgreSQL over the fake backend: the
default size of each VM type is asked for once (and the workspace volumes), ``/health`` says how
far it got, a failure is shown (and the controller serves on), and a controller told not to
prepares nothing."""

from __future__ import annotations

from pathlib import Path

from hearth.config import Settings
from hearth.errors import VmError
from hearth.vm.types import VmType
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import running_api


class FailingPrepare(FakeBackend):
    """A backend whose Browser VM template cannot be built."""

    async def prepare(self, image: object, spec: object) -> None:
        if getattr(spec, "vm_type", None) is VmType.BROWSER:
            raise VmError("the template VM never answered /health")
        await super().prepare(image, spec)  # type: ignore[arg-type]


async def test_each_type_default_size_is_prepared_once_and_shown(
    api_settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    async with running_api(api_settings, backend, tmp_path / "image") as api:
        await api.ctl.templates.wait()
        health = (await api.client.get("/health")).json()
    assert health["templates"] == {"cli": "ready", "browser": "ready"}
    settings = api_settings
    assert backend.prepared == [
        # A CLI VM's template has its volume slot: the user's workspace takes it at the hand-out.
        (
            tmp_path / "image",
            f"cli-{settings.default_vcpus}c-{settings.default_mem_mib}m"
            f"-{settings.workspace_size_mib}v",
        ),
        (tmp_path / "image", f"browser-{settings.browser_vcpus}c-{settings.browser_mem_mib}m"),
    ]
    # Users' workspace volumes are prepared too (the first user's then comes at once).
    volumes = settings.state_dir / "volumes"
    assert backend.prepared_volumes == [(volumes, settings.workspace_size_mib)]
    assert settings.workspace_size_mib > 0


async def test_a_template_that_cannot_be_built_is_shown_and_the_rest_goes_on(
    api_settings: Settings, tmp_path: Path
) -> None:
    backend = FailingPrepare()
    async with running_api(api_settings, backend, tmp_path / "image") as api:
        await api.ctl.templates.wait()
        health = await api.client.get("/health")
        detailed = await api.client.get("/health", headers=api.headers())
        created = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
    assert health.status_code == 200
    # Without a key, each one's state; the error's text only with the admin key.
    assert health.json()["templates"] == {"cli": "ready", "browser": "failed"}
    assert "never answered" not in health.text
    assert detailed.json()["templates"] == {"cli": "ready", "browser": "failed"}
    templates = detailed.json()["details"]["templates"]
    assert templates["cli"] == "ready"
    assert templates["browser"] == "failed: the template VM never answered /health"
    assert created.status_code == 201, created.text


async def test_a_controller_told_not_to_prepares_nothing(
    api_settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    settings = api_settings.with_overrides(prepare_templates=False)
    async with running_api(settings, backend, tmp_path / "image") as api:
        health = (await api.client.get("/health")).json()
    assert health["templates"] == {"cli": "off", "browser": "off"}
    assert backend.prepared == []
    assert backend.prepared_volumes == []

"""A controller prepares its restore templates before anyone waits for them (real QEMU).

Started on an image no template was built for (a private copy of the minimal image), it builds
the default sizes' templates in the background and says so in ``/health``; the first VM is then
restored from one, not booted cold.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.images.manifest import ImageDir
from tests.vm.api_fixtures import linked_copy, serve_owned

pytestmark = [pytest.mark.slow, pytest.mark.vm]


async def test_the_templates_are_ready_before_the_first_vm(
    tmp_path: Path, minimal_image: ImageDir, vm_state_dir: Path
) -> None:
    image = linked_copy(minimal_image, tmp_path / "image")
    # Browser VMs of the CLI size: one template serves both types here.
    settings = Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path / "state")}).with_overrides(
        browser_vcpus=1, browser_mem_mib=512
    )
    async for api in serve_owned(
        settings, minimal_image=image, vm_state_dir=vm_state_dir, prepare_templates=True
    ):
        async with api.client("") as anyone:
            early = (await anyone.get("/health")).json()["templates"]
            assert set(early) == {"cli", "browser"}
            assert set(early.values()) <= {"pending", "building", "ready"}, early
            await api.ctl.templates.wait()
            assert (await anyone.get("/health")).json()["templates"] == {
                "cli": "ready",
                "browser": "ready",
            }
            # So are the encrypted prototypes of their clones' overlays and of users'
            # workspaces: the first VM and the first user pay for none.
            backend = api.ctl.vms.node.backend  # type: ignore[attr-defined]
            assert set(backend.prototypes) == {"overlay", "volume"}
        async with api.client() as admin:
            created = await admin.post("/api/vms", json={"userId": "ann"})
        assert created.status_code == 201, created.text
        assert created.json()["bootMode"] == "restore"

"""The images' and templates' statuses ``/health`` shows: a state, and the detail (the image's
directory, why there is none, a build's error) apart from it, so nobody parses text."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from hearth.config import Settings
from hearth.control.templates import TemplateState, TemplateStatus, TemplateWarmer
from hearth.control.vms import VmService
from hearth.errors import ImageNotBuilt, VmError
from hearth.images.manifest import ImageDir
from hearth.node.images import ImageCatalog, ImageState, ImageStatus, image_status
from hearth.vm.types import VmSpec, VmType


def test_an_unbuilt_image_is_missing_and_says_which_command_builds_it(tmp_path: Path) -> None:
    catalog = ImageCatalog(Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path)}))
    status = image_status(catalog.image_for)
    assert set(status) == {"cli", "browser"}
    cli = status["cli"]
    assert cli.state is ImageState.MISSING
    assert "hearth image build --recipe cli" in cli.detail
    assert not cli.detail.startswith("missing")  # the state is not repeated in the detail
    assert cli.text == f"missing: {cli.detail}"


def test_a_built_image_is_ready_and_its_detail_is_its_directory(tmp_path: Path) -> None:
    def image_for(vm_type: VmType) -> ImageDir:
        if vm_type is VmType.BROWSER:
            raise ImageNotBuilt("no browser image here")
        return ImageDir(tmp_path / "cli")

    status = image_status(image_for)
    assert status["cli"] == ImageStatus(ImageState.READY, str(tmp_path / "cli"))
    assert status["cli"].text == str(tmp_path / "cli")
    assert status["browser"] == ImageStatus(ImageState.MISSING, "no browser image here")
    assert status["browser"].text == "missing: no browser image here"


class _Node:
    """Prepares the CLI template; has no Browser image."""

    async def prepare(self, vm_type: VmType, spec: VmSpec) -> None:
        if vm_type is VmType.BROWSER:
            raise ImageNotBuilt("run: hearth image build --recipe browser")


class _FailingNode:
    """Every template build fails."""

    async def prepare(self, vm_type: VmType, spec: VmSpec) -> None:
        raise VmError(f"the {vm_type.value} template VM never answered /health")


class _GatedNode:
    """Prepares every template, each build held until the test lets it end (``end``; or all,
    until ``close``, after ``open``); says which builds began."""

    def __init__(self) -> None:
        self.began: list[VmType] = []
        self._gates: list[asyncio.Event] = []
        self._open = False

    async def prepare(self, vm_type: VmType, spec: VmSpec) -> None:
        gate = asyncio.Event()
        if self._open:
            gate.set()
        self.began.append(vm_type)
        self._gates.append(gate)
        await gate.wait()

    def end(self, build: int) -> None:
        self._gates[build].set()

    def open(self) -> None:
        self._open = True
        for gate in self._gates:
            gate.set()

    def close(self) -> None:
        self._open = False

    async def until_began(self, builds: int) -> None:
        async with asyncio.timeout(5):
            while len(self.began) < builds:
                await asyncio.sleep(0)


class _Vms:
    """What the warmer asks of the VM service: a spec per type, the node, no workspaces."""

    workspaces = None

    def __init__(self, node: Any) -> None:
        self.node = node

    def spec_for(self, vm_type: VmType, vcpus: int | None, mem_mib: int | None) -> VmSpec:
        return VmSpec(vm_type=vm_type)


def _warmer(node: Any, *, enabled: bool = True) -> TemplateWarmer:
    return TemplateWarmer(vms=cast(VmService, _Vms(node)), enabled=enabled)


def test_templates_are_pending_until_warmed_or_off_when_not_prepared_ahead() -> None:
    assert _warmer(_Node()).status() == {
        "cli": TemplateStatus(TemplateState.PENDING),
        "browser": TemplateStatus(TemplateState.PENDING),
    }
    off = _warmer(_Node(), enabled=False).status()
    assert {t: s.state for t, s in off.items()} == {"cli": "off", "browser": "off"}
    assert {t: s.text for t, s in off.items()} == {"cli": "off", "browser": "off"}


async def test_a_warmed_template_is_ready_and_one_without_an_image_keeps_the_reason() -> None:
    warmer = _warmer(_Node())
    warmer.start()
    await warmer.wait()
    status = warmer.status()
    assert status["cli"] == TemplateStatus(TemplateState.READY)
    assert status["cli"].text == "ready"
    assert status["browser"].state is TemplateState.NO_IMAGE
    assert status["browser"].error == "run: hearth image build --recipe browser"
    assert status["browser"].text == "no image: run: hearth image build --recipe browser"


async def test_a_failed_build_keeps_its_error_apart_from_its_state() -> None:
    warmer = _warmer(_FailingNode())
    warmer.start()
    await warmer.wait()
    browser = warmer.status()["browser"]
    assert browser.state is TemplateState.FAILED
    assert browser.error == "the browser template VM never answered /health"
    assert browser.text == "failed: the browser template VM never answered /health"


def _states(warmer: TemplateWarmer) -> dict[str, str]:
    return {vm_type: status.state.value for vm_type, status in warmer.status().items()}


async def test_after_the_images_change_no_template_is_ready_until_it_is_rebuilt() -> None:
    node = _GatedNode()
    warmer = _warmer(node)
    node.open()
    warmer.start()
    await warmer.wait()
    assert _states(warmer) == {"cli": "ready", "browser": "ready"}

    node.close()
    warmer.start()  # what a rollout that changed the images calls
    assert _states(warmer) == {"cli": "pending", "browser": "pending"}
    await node.until_began(3)
    assert _states(warmer) == {"cli": "building", "browser": "pending"}
    node.open()
    await warmer.wait()
    assert _states(warmer) == {"cli": "ready", "browser": "ready"}


async def test_a_template_built_from_the_images_before_they_changed_is_not_called_ready() -> None:
    node = _GatedNode()
    warmer = _warmer(node)
    warmer.start()
    await node.until_began(1)
    assert _states(warmer) == {"cli": "building", "browser": "pending"}

    warmer.start()  # the images change while the CLI template is built from the old ones
    node.end(0)
    await node.until_began(2)
    assert _states(warmer) == {"cli": "pending", "browser": "building"}
    node.open()
    await warmer.wait()
    assert node.began == [VmType.CLI, VmType.BROWSER, VmType.CLI, VmType.BROWSER]
    assert _states(warmer) == {"cli": "ready", "browser": "ready"}


async def test_a_type_without_an_image_still_says_so_once_the_images_change() -> None:
    warmer = _warmer(_Node())
    warmer.start()
    await warmer.wait()
    warmer.start()
    assert _states(warmer) == {"cli": "pending", "browser": "no image"}
    await warmer.wait()
    assert _states(warmer) == {"cli": "ready", "browser": "no image"}

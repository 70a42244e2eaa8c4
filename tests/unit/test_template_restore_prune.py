"""A VM restored from a template while another process builds the next template of the same
image and size: the shared lifecycle keeps the template it restores from until the VM is up."""

from __future__ import annotations

from pathlib import Path

from hearth.errors import SnapshotError
from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.lifecycle import BackendLifecycle
from hearth.vm.qemu.templates import Template, TemplateStore
from hearth.vm.types import BootMode, Vm, VmSpec

ORIGIN = "img:small"


async def _save(directory: Path) -> None:
    for file in Template.files():
        (directory / file.name).write_bytes(b"saved")


class PrunedWhileStarting(BackendLifecycle[Template]):
    """A backend whose restores find, as they start, that another process (a second store on
    the same root) has just built the next template of their origin; it opens the template's
    files only then, as QEMU does."""

    name = "test"
    vmm_label = "test VMM"
    accel = Accel("tcg", "test")

    def __init__(self, root: Path) -> None:
        super().__init__(
            state_dir=root / "state",
            templates=TemplateStore(root / "templates"),
            use_templates=True,
            cold_deadline_s=1,
            restore_deadline_s=1,
        )
        self.other_process = TemplateStore(root / "templates")
        self.next_key = "bbbb"

    async def _template_for(self, image: ImageDir, spec: VmSpec) -> Template:
        template, _ = await self.templates.ensure("aaaa", origin=ORIGIN, build=_save)
        return template

    async def _start(
        self, vm_id: str, image: ImageDir, spec: VmSpec, *, template: Template | None, claim: bool
    ) -> Vm:
        if template is not None:
            await self.other_process.ensure(self.next_key, origin=ORIGIN, build=_save)
            for file in template.files():
                if not (template.directory / file.name).exists():
                    raise SnapshotError(f"{file.name} of template {template.key} is gone")
        mode = BootMode.RESTORE if template else BootMode.COLD
        return Vm(id=vm_id, spec=spec, backend=self.name, boot_mode=mode)

    async def _teardown(self, vm: Vm) -> list[str]:
        return []

    def _found_vm(self, workdir: Path) -> Vm | None:
        return None

    async def _reap_leftovers(self, keep: set[str]) -> list[str]:
        return []

    def _host_leftovers(self) -> list[str]:
        return []

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        return ""


async def test_a_restore_keeps_its_template_while_a_newer_one_replaces_it(tmp_path: Path) -> None:
    backend = PrunedWhileStarting(tmp_path)

    vm = await backend.create(ImageDir(tmp_path / "image"), VmSpec())

    assert vm.boot_mode is BootMode.RESTORE  # not a cold boot for want of the template's files
    # The superseded template goes once nothing restores from it: at the next build.
    assert backend.templates.lookup("aaaa") is not None
    await backend.other_process.ensure("cccc", origin=ORIGIN, build=_save)
    assert backend.templates.lookup("aaaa") is None
    assert backend.templates.lookup("bbbb") is None

"""What a controller starting up reaps of the QEMU host's leftovers: a template build whose
builder died goes with its socket; one running now (here or in another process, such as a
``hearth image build`` beside the controller) keeps its socket and network slot."""

from __future__ import annotations

import fcntl
from pathlib import Path

from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.qemu.host import reap_leftovers
from hearth.vm.qemu.network import QemuNetworks
from hearth.vm.qemu.templates import TemplateStore, build_vm_id


async def test_a_running_template_build_keeps_what_it_holds_and_a_dead_one_goes(
    tmp_path: Path,
) -> None:
    templates = TemplateStore(tmp_path / "templates")
    templates.root.mkdir()
    running, dead = templates.root / ".key1-abc", templates.root / ".key2-def"
    running.mkdir()
    dead.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sockets = {
        name: run_dir / f"{name}.qmp"
        for name in (build_vm_id(running), build_vm_id(dead), "vm-kept", "vm-gone")
    }
    for socket in sockets.values():
        socket.touch()
    for name in ("vm-kept", "vm-gone"):  # the sockets hibernations stream state through
        (run_dir / f"{name}.mig").touch()
    networks = QemuNetworks(cidr="10.201.0.0/16", claims_dir=tmp_path / "slots")
    networks.pool.claim(build_vm_id(running))
    # The running build's builder holds its key's lock, as another process would.
    with (templates.root / ".key1.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)

        reaped = await reap_leftovers(templates, run_dir, networks, keep={"vm-kept"})

    assert reaped == [dead.name]
    assert running.is_dir()
    assert not dead.exists()
    assert sorted(s.stem for s in run_dir.glob("*.qmp")) == sorted(
        [build_vm_id(running), "vm-kept"]
    )
    assert [s.name for s in run_dir.glob("*.mig")] == ["vm-kept.mig"]
    assert list(networks.pool.claims().values()) == [build_vm_id(running)]


async def test_a_disk_prototype_a_crash_left_beside_the_vms_is_removed(tmp_path: Path) -> None:
    # A file among the VMs' work dirs is no VM: it is what a crash left of a prototype being
    # made there, and goes, instead of failing every start's reap.
    backend = QemuBackend(state_dir=tmp_path / "state")
    backend.vms_dir.mkdir(parents=True)
    scratch = backend.vms_dir / ".prototype-0a1b2c.qcow2"
    scratch.write_bytes(b"QFI")
    assert f"file {scratch} is still there" in backend.leftovers()

    assert await backend.reap(keep=set()) == [scratch.name]

    assert not scratch.exists()

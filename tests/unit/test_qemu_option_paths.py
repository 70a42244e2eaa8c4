"""Host paths in QEMU's comma-separated option strings: a comma in one (a state dir or image
path) is doubled, as QEMU's option syntax escapes it, so the path comes back whole; options that
take a path literally (``-incoming unix:``) keep it as it is.

Each option string here is split the way QEMU splits ``-drive``, ``-blockdev``, ``-object`` and
``-qmp unix:`` (checked against QEMU 7.2 by hand: ``a,,b`` opens ``a,b``; ``a,b`` is a parse
error or a wrong file)."""

from __future__ import annotations

from pathlib import Path

from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.qemu.command import VmPaths, qemu_argv
from hearth.vm.qemu.hibernation import DiskLayer
from hearth.vm.qemu.options import option_value
from hearth.vm.qemu.volumes import wake_argv
from hearth.vm.types import VmSpec, Volume


def qemu_options(option: str, *, implied: str = "") -> dict[str, str]:
    """``option`` split as QEMU does: ``,`` ends a value, ``,,`` is a comma within one; a
    first part without ``=`` is the value of ``implied``."""
    parts, current, i = [], "", 0
    while i < len(option):
        if option[i] == "," and option[i + 1 : i + 2] == ",":
            current, i = current + ",", i + 2
        elif option[i] == ",":
            parts.append(current)
            current, i = "", i + 1
        else:
            current, i = current + option[i], i + 1
    parts.append(current)
    options: dict[str, str] = {}
    for index, part in enumerate(parts):
        key, equals, value = part.partition("=")
        if not equals:
            assert index == 0, f"{part!r} of {option!r} is no key=value"
            key, value = implied, part
        assert key not in options, f"{key!r} twice in {option!r}"
        options[key] = value
    return options


def after(argv: list[str], flag: str) -> list[str]:
    """The values of every ``flag`` in ``argv``."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def test_option_value_doubles_every_comma() -> None:
    assert option_value(Path("/srv/a,b,,c/disk.qcow2")) == "/srv/a,,b,,,,c/disk.qcow2"
    assert option_value("/srv/plain") == "/srv/plain"
    assert qemu_options(f"file={option_value('/x,y,')},if=virtio") == {
        "file": "/x,y,",
        "if": "virtio",
    }


def test_a_vm_under_a_dir_with_a_comma_gets_its_paths_whole(tmp_path: Path) -> None:
    state = tmp_path / "state,dir"
    paths = VmPaths(workdir=state / "vms" / "vm-1", run_dir=tmp_path / "run,1", vm_id="vm-1")
    layers = (
        DiskLayer(path=state / "pinned,x" / "layer.qcow2", fmt="qcow2"),
        DiskLayer(path=tmp_path / "images,y" / "rootfs.ext4", fmt="raw"),
    )
    argv = qemu_argv(
        binary="qemu-system-x86_64",
        vm_id="vm-1",
        image=ImageDir(tmp_path / "image,z"),
        spec=VmSpec(),
        accel=Accel("tcg", "test"),
        paths=paths,
        host_port=4100,
        disk_key_fd=7,
        layers=layers,
        wake=True,
    )
    [drive] = after(argv, "-drive")
    options = qemu_options(drive)
    assert options["file"] == str(paths.overlay)
    assert options["if"] == "virtio"
    assert options["backing.file.filename"] == str(layers[0].path)
    assert options["backing.backing.file.filename"] == str(layers[1].path)
    [secret] = after(argv, "-object")
    assert qemu_options(secret, implied="qom-type")["file"] == "/dev/fd/7"
    [qmp] = after(argv, "-qmp")
    assert qemu_options(qmp.removeprefix("unix:"), implied="path") == {
        "path": str(paths.qmp),
        "server": "on",
        "wait": "off",
    }
    [console] = after(argv, "-chardev")
    assert qemu_options(console, implied="backend")["path"] == str(paths.console)
    # These take the rest of the argument as the path: nothing to escape.
    assert after(argv, "-incoming") == [f"unix:{paths.migration}"]
    assert after(argv, "-kernel") == [str(tmp_path / "image,z" / "vmlinuz")]


def test_a_woken_volume_under_a_dir_with_a_comma_opens_its_own_file(tmp_path: Path) -> None:
    volume = Volume(path=tmp_path / "vol,umes" / "ann.qcow2", key=b"k", serial="hearth-ws")
    argv = wake_argv(0, volume, 9, slot=True)
    [blockdev] = after(argv, "-blockdev")
    options = qemu_options(blockdev)
    assert options["file.filename"] == str(volume.path)
    assert options["node-name"] == "vol0"

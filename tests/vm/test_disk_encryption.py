"""VM overlays encrypted at rest: a secret written in a guest is nowhere in clear on the host.

Each VM's own qcow2 layer is LUKS-encrypted under a key made for it and known only to its QEMU
(never on the host's disk, never on a command line); templates and the golden image hold no
user data and stay plain.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from hearth.agent_client import AgentClient
from hearth.images.manifest import ImageDir
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.types import BootMode, Vm, VmSpec
from tests.vm.conftest import TrackingBackend

pytestmark = [pytest.mark.slow, pytest.mark.vm]

_CHUNK = 8 << 20


def files_holding(roots: Iterable[Path], needles: Iterable[bytes]) -> dict[str, list[str]]:
    """Every regular file under ``roots`` that contains any needle, read as raw bytes."""
    wanted = [n for n in needles if n]
    overlap = max(len(n) for n in wanted) - 1
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.is_symlink() or not path.is_file():
                continue
            with path.open("rb") as fh:
                tail = b""
                while chunk := fh.read(_CHUNK):
                    window = tail + chunk
                    for needle in wanted:
                        if needle in window:
                            found.setdefault(str(path), []).append(needle.decode(errors="replace"))
                    tail = window[-overlap:] if overlap else b""
    return found


def oidc_document(marker: str) -> bytes:
    """A credential document whose tokens are unique markers."""
    return json.dumps(
        {
            "access_token": f"{marker}-access",
            "refresh_token": f"{marker}-refresh",
            "expires_at": 4102444800,
            "issuer": "http://127.0.0.1:1/",
        }
    ).encode()


async def deliver_and_read_back(vm: Vm, marker: str) -> None:
    """Put the document through the agent (which fsyncs it into the guest's disk), read it back."""
    assert vm.agent_url is not None
    agent = AgentClient(vm.agent_url, vm.token)
    await agent.put_credentials("oidc", oidc_document(marker))
    back = await agent.credentials_document("oidc")
    assert back is not None
    assert f"{marker}-refresh".encode() in back


def qemu_img_info(overlay: Path) -> dict[str, object]:
    """``qemu-img info`` of a disk in use (-U: QEMU holds its lock)."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(overlay)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    info: dict[str, object] = json.loads(out)
    return info


@pytest.mark.parametrize("boot_mode", [BootMode.RESTORE, BootMode.COLD], ids=["restore", "cold"])
async def test_a_credential_delivered_into_a_vm_is_not_in_clear_anywhere_in_the_state_dir(
    minimal_image: ImageDir, qemu_backend: TrackingBackend, boot_mode: BootMode
) -> None:
    vm = await qemu_backend.create(minimal_image, VmSpec(), boot_mode=boot_mode)
    assert vm.boot_mode is boot_mode
    assert vm.workdir is not None
    marker = f"hearth-at-rest-{secrets.token_hex(16)}"
    # Written and read back through the encrypted overlay (a restored clone: on the template's).
    await deliver_and_read_back(vm, marker)
    state_dir = qemu_backend.vms_dir.parent
    held = files_holding([state_dir, qemu_backend.run_dir], [marker.encode()])
    assert held == {}, f"the credential is in clear on the host: {held}"
    info = qemu_img_info(vm.workdir / "disk.qcow2")
    assert info.get("encrypted") is True, info
    assert info.get("backing-filename"), "the overlay still sits on its plain backing layer"


async def test_without_encryption_the_same_credential_is_found_in_the_overlay(
    minimal_image: ImageDir, qemu_backend: TrackingBackend, vm_state_dir: Path
) -> None:
    """The control: the search above does find a credential on a plain overlay (today's disks)."""
    plain = QemuBackend(state_dir=vm_state_dir, encrypt_disks=False)
    vm = await plain.create(minimal_image, VmSpec())
    try:
        assert vm.workdir is not None
        marker = f"hearth-at-rest-{secrets.token_hex(16)}"
        await deliver_and_read_back(vm, marker)
        assert qemu_img_info(vm.workdir / "disk.qcow2").get("encrypted") is not True
        held = files_holding([vm.workdir], [marker.encode()])
        assert str(vm.workdir / "disk.qcow2") in held
    finally:
        await plain.destroy(vm)


async def test_the_disk_key_is_never_on_the_hosts_disk_nor_on_a_command_line(
    minimal_image: ImageDir, qemu_backend: TrackingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hearth.vm.qemu import disk_keys

    made: list[bytes] = []
    original = disk_keys.DiskKey.generate

    def recording() -> disk_keys.DiskKey:
        key = original()
        made.append(key.passphrase)
        return key

    monkeypatch.setattr(disk_keys.DiskKey, "generate", recording)
    vms = [await qemu_backend.create(minimal_image, VmSpec()) for _ in range(2)]
    assert len(made) >= 2
    assert len(set(made)) == len(made), "every VM gets a key of its own"
    state_dir = qemu_backend.vms_dir.parent
    for vm in vms:
        assert vm.pid is not None
        assert vm.workdir is not None
        cmdline = Path(f"/proc/{vm.pid}/cmdline").read_bytes()
        for leak in ("cmdline", "environ"):
            exposed = Path(f"/proc/{vm.pid}/{leak}").read_bytes()
            assert not any(key in exposed for key in made), f"a disk key is in /proc/PID/{leak}"
        # The key came through a pipe QEMU inherited; QEMU drained it, nothing is left to read.
        match = re.search(rb"file=/dev/fd/(\d+)", cmdline)
        assert match is not None, cmdline
        try:
            fd = os.open(f"/proc/{vm.pid}/fd/{int(match[1])}", os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            pass  # QEMU closed it
        else:
            try:
                assert os.read(fd, 4096) == b""
            finally:
                os.close(fd)
    assert sorted(p.suffix for p in qemu_backend.run_dir.iterdir()) == [".qmp", ".qmp"]
    assert files_holding([state_dir, qemu_backend.run_dir], made) == {}
    for vm in vms:
        await qemu_backend.destroy(vm)
    assert files_holding([state_dir, qemu_backend.run_dir], made) == {}


@pytest.mark.parametrize("kind", ["overlay", "volume"])
async def test_two_disks_made_from_one_prototype_do_not_open_with_each_others_key(
    minimal_image: ImageDir, tmp_path: Path, kind: str
) -> None:
    """Re-keying gives every overlay and every volume its own master key: one VM's or one
    user's key opens no other disk."""
    from hearth.vm.qemu.disk_keys import DiskKey, key_pipe, secret_object
    from hearth.vm.qemu.disks import Overlays

    overlays = Overlays()
    keys = [DiskKey.generate(), DiskKey.generate()]
    paths = [tmp_path / "a.qcow2", tmp_path / "b.qcow2"]
    for path, key in zip(paths, keys, strict=True):
        if kind == "overlay":
            overlays.create(minimal_image.rootfs, path, backing_format="raw", key=key)
        else:
            overlays.create_volume(path, 64, key)
            assert path.stat().st_mode & 0o777 == 0o600

    def qemu_io(path: Path, key: DiskKey, *commands: str) -> subprocess.CompletedProcess[str]:
        with key_pipe(key) as fd:
            assert fd is not None
            argv = ["qemu-io", "--object", secret_object(f"/dev/fd/{fd}"), "--image-opts"]
            argv.append(f"driver=qcow2,file.filename={path},encrypt.key-secret=disk-key")
            for command in commands:
                argv += ["-c", command]
            return subprocess.run(argv, capture_output=True, text=True, pass_fds=(fd,))

    written = qemu_io(paths[0], keys[0], "write -P 0x5a 0 64k", "read -P 0x5a 0 64k")
    assert written.returncode == 0
    assert "Pattern verification failed" not in written.stdout
    wrong = qemu_io(paths[0], keys[1], "read 0 64k")
    assert wrong.returncode != 0
    assert "Invalid password" in wrong.stderr
    assert qemu_io(paths[1], keys[1], "read 0 64k").returncode == 0
    headers = [p.read_bytes()[: 1 << 20] for p in paths]
    assert headers[0] != headers[1]

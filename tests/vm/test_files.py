"""``/api/vms/{id}/files`` against a real CLI VM, over real HTTP: only what a VM shows.

One VM: a 100 MB file goes in and comes back out, streamed, with the sha256 the guest computes
(``sha256sum`` run through exec); a directory tree goes in as a tar and out as one, each file's
sha256 checked in the guest; an escape is refused with nothing written in the guest. The routes'
logic (every escape, caps, 404/409, another user's VM) is tested in process in
``tests/integration/test_api_files.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api
from tests.vm.test_api import sqlite_only
from tests.vm.test_exec import cli_vm, events_of, exit_of, output

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]
MIB = 1024 * 1024
BIG = 100 * 1000 * 1000
TRANSFER = httpx.Timeout(60.0, read=600.0, write=600.0)


async def in_guest(client: httpx.AsyncClient, vm_id: str, script: str) -> str:
    """What ``sh -c script`` prints in the guest's workspace (it must exit 0)."""
    events = await events_of(
        client, "POST", f"/api/vms/{vm_id}/exec", json={"cmd": ["sh", "-c", script]}
    )
    assert exit_of(events)["code"] == 0, output(events, "stderr")
    return output(events, "stdout").decode()


async def pseudo_random(size: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """``size`` incompressible bytes, a MiB at a time, hashed into ``digest`` as they go."""
    counter = 0
    while size > 0:
        block = hashlib.shake_256(counter.to_bytes(8, "big")).digest(min(MIB, size))
        digest.update(block)
        counter += 1
        size -= len(block)
        yield block


def local_tree(root: Path) -> dict[str, str]:
    """A small tree of files; their sha256 by path."""
    files = {
        "src/main.py": b"print('hello')\n",
        "src/pkg/__init__.py": b"",
        "data/blob.bin": os.urandom(3 * MIB),
        "README": b"tree\n",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}


async def test_a_100_mb_file_and_a_tree_round_trip_with_the_guests_sha256(
    controller: Api, tmp_path: Path
) -> None:
    vm_id, key = await cli_vm(controller, "ann")
    files = f"/api/vms/{vm_id}/files"
    async with controller.client(key) as client:
        client.timeout = TRANSFER
        sent = hashlib.sha256()
        started = time.monotonic()
        written = await client.put(
            files, params={"path": "big/file.bin"}, content=pseudo_random(BIG, sent)
        )
        upload_s = time.monotonic() - started
        assert written.status_code == 200, written.text
        assert written.json()["sha256"] == sent.hexdigest()
        guest = await in_guest(client, vm_id, "sha256sum big/file.bin")
        assert guest.split()[0] == sent.hexdigest()

        received, size = hashlib.sha256(), 0
        started = time.monotonic()
        async with client.stream("GET", files, params={"path": "big/file.bin"}) as answer:
            assert answer.status_code == 200
            assert answer.headers["x-hearth-file-type"] == "file"
            async for chunk in answer.aiter_raw():
                received.update(chunk)
                size += len(chunk)
        download_s = time.monotonic() - started
        assert (size, received.hexdigest()) == (BIG, sent.hexdigest())
        print(
            f"\n100 MB into a VM under {controller.ctl.node.vmm}: upload {upload_s:.1f} s "
            f"({BIG / upload_s / 1e6:.1f} MB/s), download {download_s:.1f} s "
            f"({BIG / download_s / 1e6:.1f} MB/s)"
        )
        removed = await client.delete(files, params={"path": "big", "recursive": "true"})
        assert removed.status_code == 200, removed.text

        # A tree in as a tar, checked file by file in the guest, and out again.
        expected = local_tree(tmp_path / "tree")
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w:gz") as archive:
            archive.add(tmp_path / "tree", arcname=".")
        written = await client.put(
            files,
            params={"path": "proj"},
            content=packed.getvalue(),
            headers={"Content-Type": "application/x-tar"},
        )
        assert written.status_code == 200, written.text
        sums = await in_guest(client, vm_id, "cd proj && find . -type f | sort | xargs sha256sum")
        in_vm = {line.split()[1].removeprefix("./"): line.split()[0] for line in sums.splitlines()}
        assert in_vm == expected
        tree = await client.get(files, params={"path": "proj"})
        assert tree.headers["x-hearth-file-type"] == "dir"
        with tarfile.open(fileobj=io.BytesIO(tree.content)) as archive:
            archive.extractall(tmp_path / "back", filter="data")
        back = {
            str(path.relative_to(tmp_path / "back")): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in (tmp_path / "back").rglob("*")
            if path.is_file()
        }
        assert back == expected

        # An escape is refused, and nothing of it is in the guest.
        refused = await client.put(files, params={"path": "../escaped"}, content=b"x")
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "path_outside_workspace"
        listing = await in_guest(client, vm_id, "ls -A ..; ls -A")
        assert "escaped" not in listing
        assert ".hearth-upload" not in listing

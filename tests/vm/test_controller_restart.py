"""The real ``hearth serve`` process: kill -9 while VMs boot, restart, nothing lost or leaked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hearth.images.manifest import ImageDir
from hearth.network.namespace import list_namespaces
from tests.vm.conftest import qemu_pids_under

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m hearth serve`` as a child process, logging to a file."""

    def __init__(self, state: Path, templates: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HEARTH_STATE_DIR": str(state),
            "HEARTH_TEMPLATE_DIR": str(templates),
            "HEARTH_LOG_FORMAT": "json",
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hearth", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"controller did not start:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


@pytest.fixture
def server(minimal_image: ImageDir, tmp_path: Path) -> Iterator[Server]:
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (state / "images" / "minimal").symlink_to(minimal_image.path)
    # A template dir of its own: the first creates must wait for a template build (≈ 8 s),
    # which keeps them in "booting" long enough to kill the controller under them.
    server = Server(state, tmp_path / "templates", tmp_path / "controller.log")
    yield server
    server.stop()
    for pid in qemu_pids_under(tmp_path):
        os.kill(pid, signal.SIGKILL)


def test_kill_9_while_vms_boot_loses_no_row_and_leaks_nothing_after_restart(
    server: Server, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    server.start()
    key = (state / "admin.key").read_text().strip()
    auth = {"Authorization": f"Bearer {key}"}
    booting = []
    for user in ("ann", "ben"):
        response = httpx.post(
            f"{server.url}/api/vms?wait=false", json={"userId": user}, headers=auth, timeout=30
        )
        assert response.status_code == 202, response.text
        booting.append(response.json()["id"])
    deadline = time.monotonic() + 30
    while not qemu_pids_under(tmp_path / "templates") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu_pids_under(tmp_path / "templates"), "the template build never started"
    server.kill9()

    server.start()
    vms = httpx.get(f"{server.url}/api/vms", headers=auth, timeout=30).json()["vms"]
    by_id = {vm["id"]: vm for vm in vms}
    assert set(booting) <= set(by_id), "a row was lost"
    for vm_id in booting:
        assert by_id[vm_id]["status"] == "failed"
        assert "restart" in by_id[vm_id]["error"] or "gone" in by_id[vm_id]["error"]
    assert qemu_pids_under(tmp_path) == [], "a QEMU process of the killed controller survived"
    assert not list((state / "vms").glob("*")) if (state / "vms").exists() else True
    assert not [n for n in list_namespaces() if any(v[3:12] in n for v in booting)]

    # The restarted controller works: a new VM boots (building the template afresh).
    created = httpx.post(f"{server.url}/api/vms", json={"userId": "cat"}, headers=auth, timeout=300)
    assert created.status_code == 201, created.text
    vm = created.json()
    # SIGTERM stops the controller gracefully and leaves VMs running...
    assert server.stop() == 0
    assert len(qemu_pids_under(state)) == 1
    # ...and the next start adopts the running VM instead of destroying it.
    server.start()
    shown = httpx.get(f"{server.url}/api/vms/{vm['id']}", headers=auth, timeout=30).json()
    assert shown["status"] == "ready"
    health = httpx.get(
        f"{vm['agentUrl']}/version",
        headers={"Authorization": f"Bearer {vm['agentToken']}"},
        timeout=10,
    )
    assert health.status_code == 200
    deleted = httpx.delete(f"{server.url}/api/vms/{vm['id']}", headers=auth, timeout=30)
    assert deleted.json()["status"] == "destroyed"
    assert qemu_pids_under(tmp_path) == []

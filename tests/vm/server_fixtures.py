"""A real ``hearth serve`` child process for tests of the controller as operators run it."""

from __future__ import annotations

import os
import shutil
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
from hearth.vm.qemu.backend import runtime_dir
from tests.vm.conftest import qemu_pids_under

__all__ = ["Server", "server"]


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
            # Templates are built when a test's first VM needs one (the tests count the QEMU
            # processes under the templates dir), not in the background at start.
            "HEARTH_PREPARE_TEMPLATES": "0",
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
        if self.proc is None:
            return 0
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
    # A test that failed with VMs running left their sockets, which no QEMU removes once killed.
    shutil.rmtree(runtime_dir(state), ignore_errors=True)

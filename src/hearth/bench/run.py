"""``hearth bench run``: exec and file transfers through Hearth, against the same VM's own paths.

Absolute times differ twofold between machines of the same kind, so every figure is judged
against something measured in the same run, on the same VM:

* exec round trip: ``POST /api/vms/{id}/exec {"cmd": ["true"]}`` sent → its ``exit`` event
  received, against the VM agent's own ``GET /health`` called directly (its URL and token, a
  connection per call, as the controller calls it); a kept-alive ``/health``, and ``true``
  through the agent's own exec API, are shown too;
* exec output: ``cat`` of a file in the guest through ``POST …/exec``, bytes per second at the
  client, against the same file sent by a raw TCP server in the guest;
* file upload and download (``PUT|GET /api/vms/{id}/files``) against the same bytes over raw TCP
  into the guest (written to a file there and synced, as an upload is) and out of it.

and, unless left out, the run part (``hearth.bench.run_first_event``): for each vendor CLI, a
run's first event through Hearth against the same CLI started directly in a VM of its own.

A real controller (``hearth serve --destroy-on-exit`` in its own process, scratch state dir,
SQLite, no warm pool, QEMU user networking) creates one CLI VM through the API. The raw TCP
server (``hearth.bench.guest_stream``) is a few lines of Python the bench starts in the guest
through the exec route; the bench reaches it through a loopback forward it adds to the VM's QEMU
user network over QMP (``hostfwd_add``), next to the forward the agent's own traffic takes. The
transfers run in ``rounds``, Hearth's and the raw one alternating which goes first. At the end
the VM is destroyed and the bench proves no QEMU process and no VM directory is left. The run
part follows, with a controller, a VM and a state dir of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from hearth.agent_client import AgentClient
from hearth.bench.controller import ControllerProcess, start_controller
from hearth.bench.errors import BenchError
from hearth.bench.guest_stream import GUEST_PORT, GuestStreamClient, guest_stream_command
from hearth.bench.machine import MachineFacts
from hearth.bench.processes import process_cpu_seconds
from hearth.bench.run_first_event import (
    BENCH_USER,
    RunPartOptions,
    RunPartResult,
    measure_first_events,
)
from hearth.bench.state import check_nothing_left, link_images
from hearth.images.manifest import ImageDir
from hearth.images.recipes import get_recipe
from hearth.progress import Progress
from hearth.teardown import Teardown
from hearth.vm.accel import detect_accel
from hearth.vm.host import free_local_port
from hearth.vm.qemu.backend import runtime_dir
from hearth.vm.qemu.command import VmPaths
from hearth.vm.qemu.monitor import Monitor
from hearth.vm.readiness import Deadline

DEFAULT_N = 30
DEFAULT_BYTES = 64 * 2**20
DEFAULT_ROUNDS = 3
WARMUP = 3  # round trips of each kind before the measured ones, not counted
CREATE_TIMEOUT_S = 900.0  # a first create boots cold and saves the snapshot template under TCG
TRANSFER_TIMEOUT_S = 600.0
BENCH_DIR = "hearth-bench"  # in the VM's workspace
DATA_FILE = f"{BENCH_DIR}/data.bin"  # uploaded; then sent out by exec, raw TCP and download
RAW_IN_FILE = f"{BENCH_DIR}/raw-in.bin"  # what the raw TCP stream into the guest writes


# What each transfer is, by the key the result and the report use.
TRANSFERS = {
    "exec_output": "exec output (POST …/exec, cat FILE)",
    "raw_out": "raw TCP out of the VM",
    "upload": "file upload (PUT …/files)",
    "raw_in": "raw TCP into the VM (written, synced)",
    "download": "file download (GET …/files)",
}


@dataclass(frozen=True, kw_only=True)
class RunBenchOptions:
    """How many round trips, how many bytes per transfer, how many rounds, where and with what."""

    n: int = DEFAULT_N
    bytes: int = DEFAULT_BYTES
    rounds: int = DEFAULT_ROUNDS
    state_dir: Path
    image: ImageDir
    vmm: str = "qemu"  # HEARTH_VMM
    qemu_accel: str = "auto"  # HEARTH_QEMU_ACCEL
    runs: RunPartOptions | None = None  # None: the run part is left out


@dataclass(kw_only=True)
class RunBenchResult:
    """Every measurement of one ``hearth bench run`` run (seconds; bytes per second)."""

    options: RunBenchOptions
    machine: MachineFacts
    vm: dict[str, object] = field(default_factory=dict)  # id, boot mode, create time
    exec_round_trip: list[float] = field(default_factory=list)
    agent_health: list[float] = field(default_factory=list)  # a connection per call
    agent_health_kept_alive: list[float] = field(default_factory=list)
    # ``true`` through the agent's own exec API, as the controller calls it (not a target: it
    # splits the exec round trip into the guest's share and the controller's).
    agent_exec_round_trip: list[float] = field(default_factory=list)
    transfers: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in TRANSFERS})
    # Per transfer, the cores each process used during it: the VM's QEMU, the controller, the
    # bench itself (the client).
    transfer_cpu: dict[str, list[dict[str, float]]] = field(
        default_factory=lambda: {k: [] for k in TRANSFERS}
    )
    runs: RunPartResult | None = None  # None: the run part was left out


async def run_run_bench(options: RunBenchOptions, *, progress: Progress) -> RunBenchResult:
    """Measure the exec and file part, then the run part (unless left out); each starts its own
    controller and CLI VM, destroys both and checks that nothing is left."""
    if options.n < 1 or options.rounds < 1 or options.bytes < 1:
        raise BenchError("n, rounds and bytes must be at least 1")
    if options.vmm != "qemu":
        raise BenchError(
            "hearth bench run reaches its raw TCP baseline through a QEMU user-net forward; "
            f"the {options.vmm} backend has none (set HEARTH_VMM=qemu)"
        )
    _check_built(options.image)
    if options.runs is not None:
        _check_built(options.runs.image, vendor_clis=True)
    result = RunBenchResult(
        options=options, machine=MachineFacts.collect(detect_accel(override=options.qemu_accel))
    )
    await _measure_exec_and_files(options, result, progress=progress)
    if options.runs is not None:
        result.runs = await measure_first_events(
            options.runs,
            scratch=options.state_dir / "runs",
            controller_env=_controller_env(options),
            progress=progress,
        )
    return result


def _check_built(image: ImageDir, *, vendor_clis: bool = False) -> None:
    """BenchError unless ``image`` is built (and, with ``vendor_clis``, carries the CLIs)."""
    manifest = image.manifest
    if manifest is None or not manifest.files_present(image.path):
        raise BenchError(f"{image.path} holds no built image")
    if vendor_clis and not get_recipe(manifest.recipe).vendor_clis:
        raise BenchError(
            f"{image.path} is a {manifest.recipe} image, without the vendor CLIs the run part "
            "runs (build one with: hearth image build --recipe cli; or leave runs out: --no-runs)"
        )


async def _measure_exec_and_files(
    options: RunBenchOptions, result: RunBenchResult, *, progress: Progress
) -> None:
    """The exec and file part: its own controller process and CLI VM, gone at the end."""
    state = options.state_dir / "controller"
    link_images(state, {"cli": options.image})
    async with Teardown(error=BenchError) as teardown:
        # Runs after the controller stopped (teardown is newest first).
        teardown.push("check that no VM is left", lambda: check_nothing_left(state))
        controller = await start_controller(
            state_dir=state, env=_controller_env(options), teardown=teardown, progress=progress
        )
        key = await controller.mint_user_key(BENCH_USER)
        api = await teardown.enter(_api_client(controller, key), "close the API client")
        with progress.phase("CLI VM", "POST /api/vms"):
            vm = await _create_vm(api, result)
            teardown.push(f"destroy VM {vm.id}", lambda: api.delete(f"/api/vms/{vm.id}"))
        cpu_pids = {"qemu": _qemu_pid(state, vm.id), "controller": controller.process.pid}
        probe = RunProbe(api=api, vm=vm, state=state, cpu_pids=cpu_pids)
        with progress.phase("round trips", f"{WARMUP} warm-up, then {options.n} of each"):
            await probe.round_trips(options.n, result)
        with progress.phase("raw TCP server", f"python3 in the guest, port {GUEST_PORT}"):
            raw = await probe.start_guest_stream()
            teardown.push("stop the guest's TCP server", probe.stop_guest_stream)
        data = os.urandom(options.bytes)
        for i in range(options.rounds):
            with progress.phase(f"transfers {i + 1}/{options.rounds}", f"{options.bytes} B each"):
                await probe.transfer_round(raw, data, hearth_first=i % 2 == 1, result=result)


@dataclass(frozen=True)
class BenchVm:
    """The bench's CLI VM: its id and its agent, reached directly."""

    id: str
    agent_url: str
    agent_token: str


class RunProbe:
    """Times requests to one VM through the controller, and the VM's own paths next to them."""

    def __init__(
        self, *, api: httpx.AsyncClient, vm: BenchVm, state: Path, cpu_pids: dict[str, int]
    ) -> None:
        self.api = api
        self.vm = vm
        self.state = state
        self.cpu_pids = cpu_pids
        self._stream_exec: str | None = None

    async def round_trips(self, n: int, result: RunBenchResult) -> None:
        """``exec true`` through the API and the agent's ``/health``, interleaved, ``n`` each."""
        agent = AgentClient(self.vm.agent_url, self.vm.agent_token)
        headers = {"Authorization": f"Bearer {self.vm.agent_token}"}
        async with httpx.AsyncClient(
            base_url=self.vm.agent_url, headers=headers, timeout=60, trust_env=False
        ) as kept:
            probes: list[tuple[list[float], Callable[[], Awaitable[object]]]] = [
                (result.agent_health, agent.health),
                (result.agent_health_kept_alive, lambda: _health(kept)),
                (result.agent_exec_round_trip, lambda: _agent_exec_true(agent)),
                (result.exec_round_trip, self._exec_true),
            ]
            for i in range(WARMUP + n):
                for samples, call in probes:
                    started = time.perf_counter()
                    await call()
                    if i >= WARMUP:
                        samples.append(time.perf_counter() - started)

    async def _exec_true(self) -> None:
        exit_event = await self._exec(["true"], sink=None)
        if exit_event.get("code") != 0:
            raise BenchError(f"`true` in the VM ended {exit_event}")

    async def _exec(self, cmd: list[str], *, sink: list[int] | None) -> dict[str, Any]:
        """Run ``cmd`` through the API to its ``exit`` event; its stdout bytes go to ``sink``."""
        url = f"/api/vms/{self.vm.id}/exec"
        async with aconnect_sse(self.api, "POST", url, json={"cmd": cmd}) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                raise BenchError(
                    f"POST {url} answered HTTP {source.response.status_code}: "
                    f"{source.response.text[:300]}"
                )
            async for event in source.aiter_sse():
                if event.event == "stdout" and sink is not None:
                    sink.append(_output_size(event.json()))
                elif event.event == "exit":
                    exit_event: dict[str, Any] = event.json()
                    return exit_event
                elif event.event == "error":
                    raise BenchError(f"{cmd[0]} in the VM: the stream broke: {event.data}")
        raise BenchError(f"{cmd[0]} in the VM: the stream ended without an exit event")

    async def start_guest_stream(self) -> GuestStreamClient:
        """Start the raw TCP server in the guest and forward a loopback port to it."""
        response = await self.api.post(
            f"/api/vms/{self.vm.id}/exec",
            params={"wait": "false"},
            json={"cmd": guest_stream_command(), "timeoutS": 3600},
        )
        if response.status_code != 202:
            raise BenchError(f"starting the guest's TCP server answered {response.status_code}")
        self._stream_exec = str(response.json()["execId"])
        port = await self._forward_guest_port(GUEST_PORT)
        client = GuestStreamClient("127.0.0.1", port, timeout_s=TRANSFER_TIMEOUT_S)
        await client.wait_ready(Deadline.after(60))
        return client

    async def stop_guest_stream(self) -> None:
        """Kill the guest's TCP server (the VM's destroy would too)."""
        if self._stream_exec is not None:
            await self.api.post(f"/api/vms/{self.vm.id}/exec/{self._stream_exec}/kill")
            self._stream_exec = None

    async def _forward_guest_port(self, guest_port: int) -> int:
        """A new loopback port QEMU's user network forwards to ``guest_port`` (QMP hostfwd_add)."""
        host_port = free_local_port()
        paths = VmPaths(
            workdir=self.state / "vms" / self.vm.id,
            run_dir=runtime_dir(self.state),
            vm_id=self.vm.id,
        )
        monitor = await Monitor.connect(self.vm.id, paths.qmp, deadline=Deadline.after(10))
        try:
            # QMP has no command for a user-net forward on a running netdev; HMP's does it.
            answer = await monitor.execute(
                "human-monitor-command",
                {"command-line": f"hostfwd_add net0 tcp:127.0.0.1:{host_port}-:{guest_port}"},
            )
        finally:
            await monitor.close()
        if str(answer).strip():
            raise BenchError(f"QEMU refused the forward to guest port {guest_port}: {answer}")
        return host_port

    async def transfer_round(
        self, raw: GuestStreamClient, data: bytes, *, hearth_first: bool, result: RunBenchResult
    ) -> None:
        """Each transfer once, in pairs (Hearth's and the raw one) whose order alternates."""
        size = len(data)
        digest = hashlib.sha256(data).hexdigest()
        pairs: list[tuple[tuple[str, Callable[[], Awaitable[int]]], ...]] = [
            (
                ("upload", lambda: self._upload(data, digest)),
                ("raw_in", lambda: raw.receive(RAW_IN_FILE, data)),
            ),
            (("exec_output", self._exec_output), ("raw_out", lambda: raw.send(DATA_FILE))),
            (("download", self._download),),
        ]
        for pair in pairs:
            for name, transfer in pair if hearth_first else reversed(pair):
                cpu_before = self._cpu_seconds()
                started = time.perf_counter()
                moved = await transfer()
                elapsed = time.perf_counter() - started
                cpu_after = self._cpu_seconds()
                if moved != size:
                    raise BenchError(f"{TRANSFERS[name]} moved {moved} bytes, not {size}")
                result.transfers[name].append(size / elapsed)
                result.transfer_cpu[name].append(
                    {k: (cpu_after[k] - cpu_before[k]) / elapsed for k in cpu_before}
                )

    def _cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by the VM's QEMU, the controller and this process."""
        used = {name: process_cpu_seconds(pid) for name, pid in self.cpu_pids.items()}
        used["client"] = time.process_time()
        return used

    async def _upload(self, data: bytes, digest: str) -> int:
        response = await self.api.put(
            f"/api/vms/{self.vm.id}/files", params={"path": DATA_FILE}, content=data
        )
        if response.status_code != 200:
            raise BenchError(f"PUT …/files answered HTTP {response.status_code}: {response.text}")
        written = response.json()
        if written.get("sha256") != digest:
            raise BenchError("the uploaded file's sha256 in the VM differs from the bytes sent")
        return int(written["size"])

    async def _exec_output(self) -> int:
        chunks: list[int] = []
        exit_event = await self._exec(["cat", DATA_FILE], sink=chunks)
        if exit_event.get("code") != 0:
            raise BenchError(f"cat in the VM ended {exit_event}")
        return sum(chunks)

    async def _download(self) -> int:
        moved = 0
        url = f"/api/vms/{self.vm.id}/files"
        async with self.api.stream("GET", url, params={"path": DATA_FILE}) as response:
            if response.status_code != 200:
                raise BenchError(f"GET …/files answered HTTP {response.status_code}")
            async for chunk in response.aiter_raw():
                moved += len(chunk)
        return moved


def _output_size(payload: dict[str, Any]) -> int:
    """How many bytes of output an exec event's payload stands for."""
    data = str(payload.get("data", ""))
    if payload.get("encoding") == "base64":
        return len(base64.b64decode(data))
    return len(data.encode())


async def _agent_exec_true(agent: AgentClient) -> None:
    """``true`` through the agent's exec API: start it, read its events to the ``exit``."""
    started = await agent.exec_start({"cmd": ["true"]})
    async for event in agent.exec_events(str(started["exec_id"])):
        if event.type == "exit" and event.data.get("code") != 0:
            raise BenchError(f"`true` through the agent ended {event.data}")


async def _health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    if response.status_code != 200:
        raise BenchError(f"the agent's /health answered HTTP {response.status_code}")


def _api_client(controller: ControllerProcess, key: str) -> httpx.AsyncClient:
    """One kept-alive connection to the controller, with the bench user's key."""
    return httpx.AsyncClient(
        base_url=controller.url,
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
        timeout=httpx.Timeout(TRANSFER_TIMEOUT_S, connect=30),
        trust_env=False,
    )


async def _create_vm(api: httpx.AsyncClient, result: RunBenchResult) -> BenchVm:
    """A ready CLI VM of the bench user's; its facts go into ``result.vm``."""
    started = time.perf_counter()
    response = await api.post("/api/vms", json={"vmType": "cli"}, timeout=CREATE_TIMEOUT_S)
    if response.status_code != 201:
        raise BenchError(f"POST /api/vms answered HTTP {response.status_code}: {response.text}")
    body = response.json()
    result.vm = {
        "id": body["id"],
        "boot_mode": body.get("bootMode") or "unknown",
        "create_s": time.perf_counter() - started,
        "vcpus": body["vcpus"],
        "mem_mib": body["memMib"],
    }
    return BenchVm(id=body["id"], agent_url=body["agentUrl"], agent_token=body["agentToken"])


def _qemu_pid(state: Path, vm_id: str) -> int:
    """The process id of the VM's QEMU, from the VM's record in the controller's state dir."""
    record = state / "vms" / vm_id / "vm.json"
    try:
        return int(json.loads(record.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"no QEMU process id for VM {vm_id} in {record}") from exc


def _controller_env(options: RunBenchOptions) -> dict[str, str]:
    """QEMU with user networking (the raw forward needs it), no warm pool to hand out VMs."""
    return {
        "HEARTH_VMM": options.vmm,
        "HEARTH_QEMU_ACCEL": options.qemu_accel,
        "HEARTH_NETWORK_MODE": "user",
        "HEARTH_POOL_CLI": "0",
        "HEARTH_POOL_BROWSER": "0",
    }

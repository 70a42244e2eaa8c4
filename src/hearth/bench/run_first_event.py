"""``hearth bench run``, its run part: a vendor CLI's first event through Hearth, against the same
CLI started directly in the same VM.

What is compared. The first event of ``GET …/runs/{id}/events`` is ``run.started``, which the
controller stores once the agent has started the CLI, before the CLI printed anything: it tells
nothing of the CLI. So Hearth's figure runs from ``POST /api/vms/{id}/runs`` sent to the first
event *made from the CLI's output* received by the client. The CLIs' opening lines (claude's
``system``/``init``, codex's ``thread.started`` and ``turn.started``, gemini's ``init`` and its
echo of the prompt) map to no event, so that first event is claude's ``raw`` ``system`` status
line printed as it sends its API request, and the first ``message.delta`` of codex and of gemini.
The direct figure is the same CLI started with the agent request the run service sends
(``run_exec_request`` and ``ExecService.agent_request``: argv, the prompt on stdin, environment,
limits) through the agent's own exec API (``AgentClient``), from ``POST /exec`` sent to the
arrival of the stdout line that the run's own parser turns into its first event: the same line,
read without the controller. Beside them, not judged: the time to ``run.started`` (Hearth) and to
the CLI's very first stdout line (directly).

How. Each CLI dials its provider's real host names through the VM's egress proxy, which
``HEARTH_EGRESS_PINS`` points at a loopback stand-in of that provider (``hearth.bench.standins``)
holding a certificate of a CA made for the run; the CLI VM boots a copy of the cli image that
trusts that CA (``trust_ca``, as ``hearth image trust-ca`` does), the one difference from
production. A credential document with made-up tokens is captured with the product's
``CredentialService`` and delivered by the auth flow's own ``deliver``, which also opens the VM's
egress path to the provider; the stand-in accepts that document's access token only. Capture and
delivery need the control plane's objects in the process that runs the VM, so this part serves
the controller's app in the bench's own process (``InProcessController``: the composition root,
entered by the app's lifespan) rather than the separate ``hearth serve`` of the exec and file
part; the bench still talks to it over HTTP on loopback, with the SDK, as any client does.

Per vendor: one run through Hearth that is not counted (it reads the CLI's files into the guest's
page cache and proves the setup works), then ``rounds`` rounds of one run each way, the order
alternating.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hearth.agent_client import AgentClient
from hearth.agent_output import output_bytes
from hearth.bench.controller import InProcessController
from hearth.bench.errors import BenchError
from hearth.bench.standins.ca import TestCA
from hearth.bench.standins.documents import sample_document
from hearth.bench.standins.server import StandInServer, egress_pins
from hearth.bench.standins.vendors import VENDORS
from hearth.bench.state import check_nothing_left, link_images
from hearth.config import Settings
from hearth.control.execs import ExecService
from hearth.control.run_pump import LineSplitter
from hearth.control.runs import RunRequest, run_exec_request
from hearth.images.manifest import ImageDir
from hearth.images.trust import trust_ca
from hearth.progress import Progress
from hearth.runs import RunEventType, parser_for
from hearth.sdk import AsyncHearth, AsyncVm
from hearth.teardown import Teardown
from hearth_agent.wire import Provider

BENCH_USER = "hearth-bench-run"
DEFAULT_PROVIDERS = tuple(VENDORS)
DEFAULT_RUN_ROUNDS = 3
RUN_WARMUP = 1  # runs through Hearth per vendor before the measured ones, not counted
PROMPT = "Say hello"
RUN_VM_MEM_MIB = 2048  # claude's 380 MB binary and node want more than the default 512 MiB
RUN_DEADLINE_S = 300.0  # one run under TCG, start to exit
CA_NAME = "hearth-bench"
_STDERR_TAIL_BYTES = 2000


@dataclass(frozen=True, kw_only=True)
class RunPartOptions:
    """The image with the vendor CLIs, which of them, and how many rounds each."""

    image: ImageDir
    providers: tuple[Provider, ...] = DEFAULT_PROVIDERS
    rounds: int = DEFAULT_RUN_ROUNDS

    def __post_init__(self) -> None:
        without_cli = [p.value for p in self.providers if p not in VENDORS]
        if without_cli or not self.providers:
            raise BenchError(f"the runs need vendor CLIs to run, not {without_cli or 'none'}")
        if self.rounds < 1:
            raise BenchError("the runs need at least one round")


@dataclass(kw_only=True)
class FirstEvents:
    """One vendor CLI's samples, in seconds from the request that started it."""

    hearth: list[float] = field(default_factory=list)  # → first event from the CLI's output
    direct: list[float] = field(default_factory=list)  # → the stdout line that event comes from
    hearth_run_started: list[float] = field(default_factory=list)  # → run.started (not judged)
    direct_first_line: list[float] = field(default_factory=list)  # → first stdout line (same)
    first_event: str = ""  # the type of Hearth's first event made from the CLI's output


@dataclass(kw_only=True)
class RunPartResult:
    """Every measurement of the run part: per vendor, and the VM they ran in."""

    options: RunPartOptions
    vm: dict[str, object] = field(default_factory=dict)  # id, boot mode, vcpus, mem_mib
    by_provider: dict[Provider, FirstEvents] = field(default_factory=dict)


async def measure_first_events(
    options: RunPartOptions,
    *,
    scratch: Path,
    controller_env: Mapping[str, str],
    progress: Progress,
) -> RunPartResult:
    """Set up stand-ins, a trusted image copy, a controller and a CLI VM under ``scratch``;
    measure every vendor of ``options``; tear all of it down and check nothing is left."""
    result = RunPartResult(options=options)
    state = scratch / "controller"
    ca = TestCA(name="Hearth bench CA")
    marker = secrets.token_hex(6)
    documents = {p: sample_document(p.value, marker) for p in options.providers}
    async with Teardown(error=BenchError) as teardown:
        with progress.phase("trusted image", "a copy of the cli image that trusts the bench CA"):
            copy = scratch / "image"
            teardown.push("remove the image copy", lambda: shutil.rmtree(copy, ignore_errors=True))
            image = await asyncio.to_thread(trusted_image_copy, options.image, copy, ca.pem)
        # Runs after the controller stopped (teardown is newest first).
        teardown.push("check that no VM is left", lambda: check_nothing_left(state))
        link_images(state, {"cli": image})
        servers: dict[Provider, StandInServer] = {}
        for provider in options.providers:
            vendor = VENDORS[provider]
            standin = vendor.standin(expected_token=vendor.access_token(documents[provider]))
            leaf = ca.issue(standin.hosts, scratch / "tls", stem=provider.value)
            servers[provider] = await teardown.enter(
                StandInServer(standin.app(), leaf=leaf), f"stop the {provider.value} stand-in"
            )
        settings = Settings.from_env(
            {
                **controller_env,
                "HEARTH_STATE_DIR": str(state),
                "HEARTH_DATABASE_URL": f"sqlite+aiosqlite:///{state / 'hearth.db'}",
                "HEARTH_EGRESS_PINS": egress_pins(servers),
            }
        )
        with progress.phase("controller", "the API served in this process"):
            controller = await teardown.enter(InProcessController(settings), "stop the controller")
        key = await controller.mint_user_key(BENCH_USER)
        # A transport of its own: no proxy of the environment between the bench and loopback.
        client = AsyncHearth(controller.url, key, transport=httpx.AsyncHTTPTransport())
        await teardown.enter(client, "close the API client")
        with progress.phase("CLI VM", f"POST /api/vms, {RUN_VM_MEM_MIB} MiB"):
            vm = await client.vms.create("cli", mem_mib=RUN_VM_MEM_MIB)
            teardown.push(f"destroy VM {vm.id}", vm.destroy)
        result.vm = {
            "id": vm.id,
            "boot_mode": vm.boot_mode or "unknown",
            "vcpus": vm.vcpus,
            "mem_mib": vm.mem_mib,
        }
        control = controller.control
        with progress.phase("logins", "captured and delivered by the auth flow's code"):
            for provider, document in documents.items():
                raw = json.dumps(document).encode()
                await control.credentials.capture(BENCH_USER, provider.value, raw)
                await control.delivery.deliver(BENCH_USER, provider.value, vm.id)
        probe = FirstEventProbe(vm=vm, execs=control.execs, settings=settings)
        for provider in options.providers:
            detail = f"{RUN_WARMUP} warm-up run, then {options.rounds} rounds of two"
            with progress.phase(f"runs of {provider.value}", detail):
                result.by_provider[provider] = await probe.measure(provider, options.rounds)
    return result


def trusted_image_copy(image: ImageDir, out: Path, ca_pem: bytes) -> ImageDir:
    """A copy of ``image`` in ``out`` (sparse, reflinked where the filesystem can) whose trust
    store holds the CA in ``ca_pem``."""
    out.mkdir(parents=True, exist_ok=True)
    for source in image.path.iterdir():
        if source.is_file():
            subprocess.run(
                ["cp", "--sparse=always", "--reflink=auto", source, out / source.name], check=True
            )
    copy = ImageDir(out)
    trust_ca(copy.rootfs, ca_pem, name=CA_NAME)
    return copy


@dataclass(frozen=True)
class HearthRun:
    """When a run through Hearth showed ``run.started`` and its first event from the CLI."""

    run_started: float
    first_event: float
    first_type: str


@dataclass(frozen=True)
class DirectRun:
    """When the CLI run through the agent printed its first line, and the line of that event."""

    first_line: float
    first_event: float


class FirstEventProbe:
    """Runs one CLI in the VM both ways and times each run's first event."""

    def __init__(self, *, vm: AsyncVm, execs: ExecService, settings: Settings) -> None:
        if vm.agent_url is None or vm.agent_token is None:
            raise BenchError(f"VM {vm.id} was created without its agent's URL and token")
        self.vm = vm
        self.agent = AgentClient(vm.agent_url, vm.agent_token)
        self.execs = execs
        self.settings = settings

    async def measure(self, provider: Provider, rounds: int) -> FirstEvents:
        """``RUN_WARMUP`` runs through Hearth, then ``rounds`` pairs, the order alternating."""
        samples = FirstEvents()
        for _ in range(RUN_WARMUP):
            await self.through_hearth(provider)
        for i in range(rounds):
            for hearth in (True, False) if i % 2 == 0 else (False, True):
                if hearth:
                    run = await self.through_hearth(provider)
                    samples.hearth.append(run.first_event)
                    samples.hearth_run_started.append(run.run_started)
                    samples.first_event = run.first_type
                else:
                    direct = await self.directly(provider)
                    samples.direct.append(direct.first_event)
                    samples.direct_first_line.append(direct.first_line)
        return samples

    async def through_hearth(self, provider: Provider) -> HearthRun:
        """A run through the API, read to its end; it must complete."""
        run_started = first_event = None
        first_type = last_type = ""
        async with asyncio.timeout(RUN_DEADLINE_S):
            started = time.perf_counter()
            run = await self.vm.start_run(provider.value, PROMPT)
            async for event in self.vm.run_events(run.id):
                at = time.perf_counter() - started
                if event.type == RunEventType.STARTED:
                    run_started = at
                elif first_event is None:
                    first_event, first_type = at, event.type
                last_type = event.type
        if last_type != RunEventType.COMPLETED or run_started is None or first_event is None:
            ended = await self.vm.get_run(run.id)
            raise BenchError(
                f"the {provider.value} run through Hearth ended {ended.status} "
                f"({ended.failure}), not completed"
            )
        return HearthRun(run_started=run_started, first_event=first_event, first_type=first_type)

    async def directly(self, provider: Provider) -> DirectRun:
        """The same CLI through the agent's exec API, read to its exit; it must exit 0."""
        request = RunRequest(provider=provider, prompt=PROMPT)
        command = run_exec_request(request, timeout_s=self.settings.run_timeout_s)
        body = self.execs.agent_request(self.vm.id, command)
        parser = parser_for(provider)
        lines = LineSplitter()
        stderr = bytearray()
        first_line = first_event = None
        exit_data: dict[str, object] = {}
        async with asyncio.timeout(RUN_DEADLINE_S):
            started = time.perf_counter()
            exec_id = str((await self.agent.exec_start(body))["exec_id"])
            async for event in self.agent.exec_events(exec_id):
                if event.type == "stdout":
                    for line in lines.feed(output_bytes(event.data)):
                        at = time.perf_counter() - started
                        if first_line is None and line.strip():
                            first_line = at
                        if first_event is None and parser.feed_line(line):
                            first_event = at
                elif event.type == "stderr":
                    stderr += output_bytes(event.data)
                    del stderr[:-_STDERR_TAIL_BYTES]
                elif event.type == "exit":
                    exit_data = event.data
        if exit_data.get("code") != 0 or first_line is None or first_event is None:
            raise BenchError(
                f"{provider.value} run through the agent ended {exit_data} without its first "
                f"event; stderr: {stderr.decode(errors='replace')[-500:]}"
            )
        return DirectRun(first_line=first_line, first_event=first_event)

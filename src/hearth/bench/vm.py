"""``hearth bench vm``: VM starts by every path Hearth has, next to the original controller's.

Phases, in this order, every VM destroyed as soon as it is measured:

1. ``baseline`` and ``cold`` interleaved (one of each per round, so drift hits both alike);
2. ``template``: the first restore-path create, which builds the snapshot template if needed;
3. ``restore``: creates restored from the template;
4. ``concurrent``: ``concurrency`` restore-path creates started at once;
5. ``pool``: a real ``WarmPool`` on a ``VmService`` (SQLite store in the bench's state dir);
   each sample times ``VmService.create`` while a pooled VM waits (pooled VMs are claimed as
   they join the pool; a hand-out attaches the user's workspace, timed apart), then the
   handed-out VM's agent ``GET /health`` round trip (the hand-out's yardstick), then lets the
   pool refill.

Hearth's paths run on the QEMU backend, opened through ``hearth.vm.select`` like the
controller's and held as a ``VmBackend``; the baseline needs QEMU (it is a QEMU comparison), so
another VMM is refused before anything starts. Everything runs under a fresh state dir by
default, so a running controller's VMs are never touched; teardown destroys what is left (newest
first) and proves, from the backend's ``leftovers`` and the baseline's, that nothing is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

from hearth.agent_client import AgentClient
from hearth.bench.baseline import BaselineLauncher
from hearth.bench.errors import BenchError
from hearth.bench.machine import MachineFacts
from hearth.bench.processes import kill_leftover_qemu, vmm_rss_bytes
from hearth.config import Settings
from hearth.control.pool import WarmPool
from hearth.control.workspaces import Workspaces
from hearth.images.manifest import ImageDir
from hearth.node.images import ImageCatalog
from hearth.node.local import LocalNode
from hearth.progress import Progress
from hearth.runtime import open_hearth
from hearth.teardown import Teardown
from hearth.vm.backend import VmBackend
from hearth.vm.host import bytes_on_disk
from hearth.vm.qemu.backend import qemu_binary, runtime_dir
from hearth.vm.qemu.command import VmPaths
from hearth.vm.qemu.templates import TemplateStore, template_key
from hearth.vm.readiness import Deadline
from hearth.vm.select import Vmm, open_backend
from hearth.vm.types import BootMode, Vm, VmSpec, VmType

BENCH_USER = "hearth-bench"
POOL_FILL_DEADLINE_S = 180.0
HEALTH_TRIPS = 3  # agent /health round trips timed on each handed-out VM


@dataclass(frozen=True, kw_only=True)
class VmBenchOptions:
    """What to run: the image, samples per path, the concurrent batch and the pool size."""

    image: ImageDir
    n: int
    concurrency: int
    state_dir: Path
    pool_size: int = 1
    spec: VmSpec = field(default_factory=VmSpec)


@dataclass(frozen=True, kw_only=True)
class VmSample:
    """One VM start, measured."""

    create_s: float  # wall time of the whole create call (disk, process, healthy, claim)
    disk_bytes: int  # what the VM's own disk occupies once it is healthy
    rss_bytes: int  # resident memory of its QEMU process once it is healthy
    copy_s: float | None = None  # baseline only: the full copy of the golden image


@dataclass(kw_only=True)
class VmBenchResult:
    """Every measurement of one ``hearth bench vm`` run."""

    options: VmBenchOptions
    machine: MachineFacts
    baseline: list[VmSample] = field(default_factory=list)
    cold: list[VmSample] = field(default_factory=list)
    restore: list[VmSample] = field(default_factory=list)
    pool: list[float] = field(default_factory=list)
    # Attaching the user's workspace inside each hand-out (hot-plug and mount).
    pool_workspace: list[float] = field(default_factory=list)
    # The agent's GET /health round trip on each handed-out VM, the hand-out's yardstick.
    agent_health: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)
    concurrent_wall_s: float = 0.0
    destroy: list[float] = field(default_factory=list)
    template_built: bool = False
    template_first_create_s: float = 0.0
    template_bytes: int = 0


async def run_vm_bench(options: VmBenchOptions, *, progress: Progress) -> VmBenchResult:
    """Run every phase; whatever happens, nothing the bench started is left running."""
    if options.n < 1 or options.concurrency < 1 or options.pool_size < 1:
        raise BenchError("n, concurrency and pool size must be at least 1")
    settings = _bench_settings(options)
    backend = open_backend(settings)
    baseline = _baseline_launcher(options, backend)
    result = VmBenchResult(options=options, machine=MachineFacts.collect(backend.accel))
    async with Teardown(error=BenchError) as teardown:
        # Registered first, so they run last: after every other cleanup, prove nothing is left.
        teardown.push(
            "remove the runtime dirs if empty",
            functools.partial(_rmdir, runtime_dir(options.state_dir), baseline.run_dir),
        )
        teardown.push(
            "check nothing is left",
            functools.partial(_check_nothing_left, backend, baseline, options.state_dir),
        )
        teardown.push("stop baseline VMs", baseline.destroy_all)
        bench = _VmPhases(options, settings, backend, baseline, result, teardown, progress)
        await bench.baseline_and_cold()
        await bench.template()
        await bench.restore()
        await bench.concurrent()
        await bench.pool()
    return result


def _bench_settings(options: VmBenchOptions) -> Settings:
    """The settings of the bench's QEMU backend and of its pool phase's controller: everything
    in the bench's state dir (templates too), a warm pool of ``pool_size`` VMs of its spec;
    the environment's cold boot deadline (HEARTH_COLD_BOOT_DEADLINE_S)."""
    return Settings(
        state_dir=options.state_dir,
        cold_boot_deadline_s=Settings.from_env().cold_boot_deadline_s,
        vmm=Vmm.QEMU.value,
        template_dir=options.state_dir / "templates",
        pool_cli=options.pool_size,
        default_vcpus=options.spec.vcpus,
        default_mem_mib=options.spec.mem_mib,
        network_mode=options.spec.network.value,
    )


def _baseline_launcher(options: VmBenchOptions, backend: VmBackend) -> BaselineLauncher:
    """The original controller's start, on Hearth's QEMU command line: for a QEMU backend only.

    Its sockets go to a runtime dir of its own, named after the baseline's root the way the QEMU
    backend names its own: a QMP socket path must stay under 108 bytes, which one inside a deep
    state dir (pytest's) does not.
    """
    if backend.name != Vmm.QEMU.value:
        raise BenchError(
            "the baseline is the original controller's QEMU start, measured next to Hearth's "
            f"QEMU backend; it cannot run next to the {backend.name} backend"
        )
    root = options.state_dir / "baseline"
    return BaselineLauncher(
        image=options.image,
        root=root,
        run_dir=runtime_dir(root),
        binary=qemu_binary(),
        accel=backend.accel,
    )


def _time_workspace_attach(workspaces: Workspaces | None, took_s: list[float]) -> None:
    """Note how long each attach of a user's workspace takes (the bench's own measurement:
    the controller's object is wrapped once it is built, nothing else changes)."""
    if workspaces is None:
        return
    attach = workspaces.attach

    async def timed(user_id: str, vm: Vm) -> None:
        started = time.monotonic()
        try:
            await attach(user_id, vm)
        finally:
            took_s.append(time.monotonic() - started)

    workspaces.attach = timed  # type: ignore[method-assign]


class _VmPhases:
    """The phases of one run, sharing the backend, the teardown and the result."""

    def __init__(
        self,
        options: VmBenchOptions,
        settings: Settings,
        backend: VmBackend,
        baseline: BaselineLauncher,
        result: VmBenchResult,
        teardown: Teardown,
        progress: Progress,
    ) -> None:
        self.options = options
        self.settings = settings
        self.image = options.image
        self.spec = options.spec
        self.backend = backend
        # The QEMU backend's own (select.open_backend names no other): to find a VM's overlay.
        self.run_dir = runtime_dir(options.state_dir)
        self.templates = TemplateStore(options.state_dir / "templates")  # _bench_settings' dir
        self.baseline = baseline
        self.result = result
        self.teardown = teardown
        self.progress = progress

    async def baseline_and_cold(self) -> None:
        """Interleave the old method and Hearth's cold boot, one of each per round."""
        n = self.options.n
        for i in range(1, n + 1):
            with self.progress.phase("baseline", f"{i}/{n}: full copy, cold boot, 2 s polls"):
                vm = await self.baseline.start(self.spec)
                self.teardown.push(f"stop {vm.id}", functools.partial(self.baseline.destroy, vm))
                self.result.baseline.append(
                    VmSample(
                        create_s=vm.time_to_healthy_s,
                        disk_bytes=vm.disk_bytes,
                        rss_bytes=vmm_rss_bytes(vm.pid),
                        copy_s=vm.copy_s,
                    )
                )
                await self.baseline.destroy(vm)
            with self.progress.phase("cold boot", f"{i}/{n}"):
                self.result.cold.append(await self._sample(BootMode.COLD))

    async def template(self) -> None:
        """The first restore-path create: builds the snapshot template unless it exists."""
        key = template_key(self.image, self.spec, self.backend.accel)
        self.result.template_built = self.templates.lookup(key) is None
        detail = "build + first restore" if self.result.template_built else "reused"
        with self.progress.phase("template", detail):
            started = time.monotonic()
            vm = await self._create(None)
            self.result.template_first_create_s = time.monotonic() - started
            await self._destroy(vm)
        template = self.templates.lookup(key)
        if template is None:
            raise BenchError("the snapshot template is missing after a restore-path create")
        self.result.template_bytes = sum(
            bytes_on_disk(p) for p in template.directory.iterdir() if p.is_file()
        )

    async def restore(self) -> None:
        """Creates restored from the template."""
        n = self.options.n
        for i in range(1, n + 1):
            with self.progress.phase("restore", f"{i}/{n}"):
                self.result.restore.append(await self._sample(None))

    async def concurrent(self) -> None:
        """``concurrency`` restore-path creates at once; each one's time and the batch's."""
        count = self.options.concurrency

        async def one() -> tuple[Vm, float]:
            started = time.monotonic()
            vm = await self._create(None)
            return vm, time.monotonic() - started

        with self.progress.phase("concurrent", f"{count} creates at once"):
            started = time.monotonic()
            outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
            self.result.concurrent_wall_s = time.monotonic() - started
            made = [o for o in outcomes if not isinstance(o, BaseException)]
            for vm, _ in made:
                await self._destroy(vm)
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            if failed:
                raise BenchError(
                    f"{len(failed)} of {count} concurrent creates failed: {failed[0]}"
                ) from failed[0]
            self.result.concurrent.extend(seconds for _, seconds in made)

    async def pool(self) -> None:
        """Hand-outs from a real warm pool, refilled between samples."""
        node = LocalNode(
            self.backend,
            ImageCatalog(self.settings, overrides={VmType.CLI: self.image.path}),
            volumes_dir=self.settings.state_dir / "volumes",
        )
        hearth = await self.teardown.enter(
            open_hearth(self.settings, node=node, destroy_on_exit=True)
        )
        service = hearth.control.vms
        _time_workspace_attach(service.workspaces, self.result.pool_workspace)
        pool = service.pool
        if pool is None:
            raise BenchError("the controller started without a warm pool")
        spec = pool.spec(VmType.CLI)
        n = self.options.n
        with self.progress.phase("pool fill", f"{self.options.pool_size} VM(s)"):
            await self._pool_full(pool)
        for i in range(1, n + 1):
            with self.progress.phase("pool hand-out", f"{i}/{n}"):
                waiting = set(service.live)
                started = time.monotonic()
                record = await service.create(user_id=BENCH_USER, spec=spec)
                handout_s = time.monotonic() - started
                if record.id not in waiting:
                    raise BenchError(f"VM {record.id} was booted, not handed out by the pool")
                self.result.pool.append(handout_s)
                agent = AgentClient(str(record.agent_url), None)
                for _ in range(HEALTH_TRIPS):
                    started = time.monotonic()
                    await agent.health()
                    self.result.agent_health.append(time.monotonic() - started)
                await service.destroy(record.id, user_id=BENCH_USER)
            with self.progress.phase("pool refill"):
                await self._pool_full(pool)

    async def _pool_full(self, pool: WarmPool) -> None:
        deadline = Deadline.after(POOL_FILL_DEADLINE_S)
        while pool.size(VmType.CLI) < self.options.pool_size:
            if deadline.expired:
                raise BenchError(
                    f"the warm pool did not fill within {POOL_FILL_DEADLINE_S:.0f} s "
                    "(see pool_refill_failed in the log)"
                )
            await asyncio.sleep(0.05)

    async def _sample(self, boot_mode: BootMode | None) -> VmSample:
        started = time.monotonic()
        vm = await self._create(boot_mode)
        create_s = time.monotonic() - started
        sample = VmSample(
            create_s=create_s,
            disk_bytes=self._disk_bytes(vm),
            rss_bytes=vmm_rss_bytes(vm.pid),
        )
        await self._destroy(vm)
        return sample

    async def _create(self, boot_mode: BootMode | None) -> Vm:
        """Create a VM, register its destruction, and check it took the path asked for."""
        vm = await self.backend.create(self.image, self.spec, boot_mode=boot_mode)
        self.teardown.push(f"destroy {vm.id}", functools.partial(self.backend.destroy, vm))
        expected = BootMode.COLD if boot_mode is BootMode.COLD else BootMode.RESTORE
        if vm.boot_mode is not expected:
            raise BenchError(
                f"VM {vm.id} started by {vm.boot_mode.value}, not {expected.value} "
                "(a failed restore falls back to a cold boot; see restore_failed in the log)"
            )
        return vm

    async def _destroy(self, vm: Vm) -> None:
        started = time.monotonic()
        await self.backend.destroy(vm)
        self.result.destroy.append(time.monotonic() - started)

    def _disk_bytes(self, vm: Vm) -> int:
        if vm.workdir is None:
            raise BenchError(f"VM {vm.id} has no work directory")
        paths = VmPaths(workdir=vm.workdir, run_dir=self.run_dir, vm_id=vm.id)
        return bytes_on_disk(paths.overlay)


def _rmdir(*directories: Path) -> None:
    """Remove each of ``directories`` that exists and is empty (the runtime dirs of the QEMU
    backend and of the baseline, in /run/hearth)."""
    for directory in directories:
        with contextlib.suppress(FileNotFoundError, OSError):
            directory.rmdir()


def _check_nothing_left(backend: VmBackend, baseline: BaselineLauncher, state_dir: Path) -> None:
    """Raise BenchError if the backend or the baseline still holds anything on the host; a QEMU
    still running from the bench's state dir is killed (after being reported)."""
    problems = backend.leftovers() + baseline.leftovers()
    killed = kill_leftover_qemu(state_dir)
    if killed:
        problems.append(f"killed the QEMU processes still running from {state_dir}: {killed}")
    if problems:
        raise BenchError("the bench left resources behind: " + "; ".join(problems))

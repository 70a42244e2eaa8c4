"""Benchmark reports: the JSON documents, the verdict on each target, and the Rich tables."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hearth.bench.api import ApiBenchResult
from hearth.bench.baseline import HEALTH_POLL_INTERVAL_S
from hearth.bench.load import MAX_IN_FLIGHT, CpuUse
from hearth.bench.machine import MachineFacts
from hearth.bench.stats import Summary
from hearth.bench.vm import VmBenchResult
from hearth.images.manifest import ImageDir
from hearth.vm.host import bytes_on_disk

# The targets.
RESTORE_SPEEDUP_TARGET = 12.0  # restore ≤ 1/12 of a cold boot
POOL_HANDOUT_P50_TARGET_S = 0.050
# A hand-out is a row update (pooled VMs are claimed as they join the pool) and the user's
# workspace: at most this many agent /health round trips (p50s).
POOL_HANDOUT_HEALTH_RATIO_TARGET = 2.0
DISK_FRACTION_TARGET = 0.01  # disk added per VM ≤ 1 % of the image
API_P99_TARGET_S = 0.020
API_TARGET_RATE_RPS = 500.0
_RATE_SLACK = 0.95  # an open loop that reached 95 % of its schedule counts as at that rate


@dataclass(frozen=True, kw_only=True)
class Target:
    """One target of the issue, what was measured against it, and whether it is met."""

    name: str
    goal: str
    measured: str
    met: bool

    def to_dict(self) -> dict[str, object]:
        """The JSON shape."""
        return {"name": self.name, "goal": self.goal, "measured": self.measured, "met": self.met}


# ---- hearth bench vm -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VmFigures:
    """The summaries a VM report is made of."""

    baseline: Summary
    baseline_copy: Summary
    cold: Summary
    restore: Summary
    pool: Summary
    pool_workspace: Summary
    pool_without_workspace: Summary  # each hand-out less its workspace attach
    agent_health: Summary
    concurrent: Summary
    destroy: Summary
    disk: dict[str, Summary]
    rss: dict[str, Summary]
    image_bytes: int

    @classmethod
    def of(cls, result: VmBenchResult) -> VmFigures:
        """Summarise every phase of ``result``."""
        paths = {"baseline": result.baseline, "cold": result.cold, "restore": result.restore}
        return cls(
            baseline=Summary.of([s.create_s for s in result.baseline]),
            baseline_copy=Summary.of([s.copy_s or 0.0 for s in result.baseline]),
            cold=Summary.of([s.create_s for s in result.cold]),
            restore=Summary.of([s.create_s for s in result.restore]),
            pool=Summary.of(result.pool),
            pool_workspace=Summary.of(result.pool_workspace),
            pool_without_workspace=Summary.of(
                [h - w for h, w in zip(result.pool, result.pool_workspace, strict=True)]
                if len(result.pool_workspace) == len(result.pool)
                else result.pool
            ),
            agent_health=Summary.of(result.agent_health),
            concurrent=Summary.of(result.concurrent),
            destroy=Summary.of(result.destroy),
            disk={k: Summary.of([s.disk_bytes for s in v]) for k, v in paths.items()},
            rss={k: Summary.of([s.rss_bytes for s in v]) for k, v in paths.items()},
            image_bytes=result.options.image.rootfs.stat().st_size,
        )

    @property
    def restore_speedup_ratio(self) -> float:
        """Cold p50 / restore p50."""
        return self.cold.p50 / self.restore.p50

    @property
    def pool_health_ratio(self) -> float:
        """Warm-pool hand-out p50 / the agent's /health round trip p50."""
        return self.pool.p50 / self.agent_health.p50

    @property
    def best_hearth_p50(self) -> tuple[str, float]:
        """Hearth's fastest way to a VM (by p50) and its p50."""
        return min(
            (("cold", self.cold.p50), ("restore", self.restore.p50), ("pool", self.pool.p50)),
            key=lambda item: item[1],
        )

    @property
    def baseline_ratio(self) -> float:
        """Baseline p50 / Hearth's best p50."""
        return self.baseline.p50 / self.best_hearth_p50[1]

    def targets(self) -> list[Target]:
        """The VM targets of the issue, judged on these figures."""
        hearth_disk = max(self.disk["cold"].max, self.disk["restore"].max)
        fraction = hearth_disk / self.image_bytes
        return [
            Target(
                name="restore_vs_cold",
                goal=f"restore ≤ 1/{RESTORE_SPEEDUP_TARGET:.0f} of a cold boot (p50)",
                measured=f"cold {duration_text(self.cold.p50)} / "
                f"restore {duration_text(self.restore.p50)} = {self.restore_speedup_ratio:.1f}x",
                met=self.restore_speedup_ratio >= RESTORE_SPEEDUP_TARGET,
            ),
            Target(
                name="pool_handout_p50",
                goal=f"warm-pool hand-out p50 ≤ {POOL_HANDOUT_P50_TARGET_S * 1000:.0f} ms",
                measured=f"p50 {duration_text(self.pool.p50)} (max {duration_text(self.pool.max)})",
                met=self.pool.p50 <= POOL_HANDOUT_P50_TARGET_S,
            ),
            Target(
                name="pool_handout_vs_health",
                goal=f"warm-pool hand-out p50 ≤ {POOL_HANDOUT_HEALTH_RATIO_TARGET:.0f}x the "
                "agent's /health round trip p50 (same run)",
                measured=f"hand-out {duration_text(self.pool.p50)} / health "
                f"{duration_text(self.agent_health.p50)} = {self.pool_health_ratio:.1f}x "
                f"(less the user's workspace attach: "
                f"{duration_text(self.pool_without_workspace.p50)} = "
                f"{self.pool_without_workspace.p50 / self.agent_health.p50:.1f}x)",
                met=self.pool_health_ratio <= POOL_HANDOUT_HEALTH_RATIO_TARGET,
            ),
            Target(
                name="disk_per_vm",
                goal=f"disk added per VM ≤ {DISK_FRACTION_TARGET:.0%} of the image",
                measured=f"largest overlay {_size(hearth_disk)} = {fraction:.3%} of "
                f"{_size(self.image_bytes)} (a full copy: {_size(self.disk['baseline'].max)})",
                met=fraction <= DISK_FRACTION_TARGET,
            ),
        ]


def vm_document(result: VmBenchResult, *, command: str) -> dict[str, object]:
    """The JSON document of a ``hearth bench vm`` run."""
    figures = VmFigures.of(result)
    options = result.options
    manifest = options.image.manifest
    best_name, best_p50 = figures.best_hearth_p50
    return {
        **document_head("vm", command=command, machine=result.machine),
        "image": {
            **image_facts(options.image),
            "kernel": manifest.kernel_version if manifest else "unknown",
            "rootfs_bytes": figures.image_bytes,
            "rootfs_allocated_bytes": bytes_on_disk(options.image.rootfs),
        },
        "vm_spec": {
            "vcpus": options.spec.vcpus,
            "mem_mib": options.spec.mem_mib,
            "network": options.spec.network.value,
        },
        "cold": figures.cold.seconds(),
        "restore": figures.restore.seconds(),
        "pool": {
            **figures.pool.seconds(),
            "pool_size": options.pool_size,
            "workspace": figures.pool_workspace.seconds(),
            "without_workspace": figures.pool_without_workspace.seconds(),
            "agent_health": figures.agent_health.seconds(),
            "health_ratio": figures.pool_health_ratio,
        },
        "baseline": {
            **figures.baseline.seconds(),
            "copy": figures.baseline_copy.seconds(),
            "health_poll_interval_s": HEALTH_POLL_INTERVAL_S,
        },
        "concurrent": {
            "concurrency": options.concurrency,
            "batch_wall_s": result.concurrent_wall_s,
            **figures.concurrent.seconds(),
        },
        "template": {
            "built": result.template_built,
            "first_create_s": result.template_first_create_s,
            "bytes": result.template_bytes,
        },
        "destroy": figures.destroy.seconds(),
        "disk_bytes": {k: s.bytes() for k, s in figures.disk.items()},
        "rss_bytes": {k: s.bytes() for k, s in figures.rss.items()},
        "restore_speedup_ratio": figures.restore_speedup_ratio,
        "baseline_ratio": figures.baseline_ratio,
        "baseline_ratio_against": best_name,
        "best_hearth_p50_s": best_p50,
        "targets": [t.to_dict() for t in figures.targets()],
    }


def vm_tables(result: VmBenchResult) -> list[Table]:
    """The Rich tables of a ``hearth bench vm`` run."""
    figures = VmFigures.of(result)
    c = result.options.concurrency
    timing = durations_table(
        f"VM create → healthy ({result.machine.accel}, {result.machine.cores} cores)",
        "path",
        "disk / VM",
        "RSS / VM",
    )
    # What a VM of each path occupies on disk and in memory (p50s); the other rows start none.
    held = {k: (_size(figures.disk[k].p50), _size(figures.rss[k].p50)) for k in figures.disk}
    rows: list[tuple[str, Summary, str, str]] = [
        (
            f"baseline: copy + cold + {HEALTH_POLL_INTERVAL_S:.0f} s polls",
            figures.baseline,
            *held["baseline"],
        ),
        ("cold boot", figures.cold, *held["cold"]),
        ("snapshot restore", figures.restore, *held["restore"]),
        ("warm-pool hand-out", figures.pool, "", ""),
        ("  of which: the user's workspace", figures.pool_workspace, "", ""),
        ("agent GET /health round trip", figures.agent_health, "", ""),
        (f"{c} concurrent restores", figures.concurrent, "", ""),
        ("destroy", figures.destroy, "", ""),
    ]
    for label, summary, disk, rss in rows:
        timing.add_row(label, *duration_cells(summary), disk, rss)
    best_name, _ = figures.best_hearth_p50
    ratios = Table(show_header=False, title="ratios")
    ratios.add_row(
        "restore speed-up (cold p50 / restore p50)", f"{figures.restore_speedup_ratio:.1f}x"
    )
    ratios.add_row(
        f"baseline p50 / Hearth's best p50 ({best_name})", f"{figures.baseline_ratio:.1f}x"
    )
    ratios.add_row("baseline copy p50", duration_text(figures.baseline_copy.p50))
    ratios.add_row(f"{c} concurrent restores, whole batch", duration_text(result.concurrent_wall_s))
    template = "built" if result.template_built else "reused"
    ratios.add_row(
        f"template ({template}), first restore-path create",
        f"{duration_text(result.template_first_create_s)}, {_size(result.template_bytes)} on disk",
    )
    return [machine_table(result.machine), timing, ratios, targets_table(figures.targets())]


# ---- hearth bench api ------------------------------------------------------------------------


def api_targets(result: ApiBenchResult) -> list[Target]:
    """The API target of the issue, judged per database and route."""
    targets = []
    for database in result.databases:
        for route, endpoint in database.endpoints.items():
            load = endpoint.open
            at_rate = (
                load.target_rps >= API_TARGET_RATE_RPS
                and load.answered_rps >= _RATE_SLACK * API_TARGET_RATE_RPS
            )
            targets.append(
                Target(
                    name=f"api_p99_{database.name}_{route}",
                    goal=f"{database.name} GET {route}: p99 ≤ "
                    f"{API_P99_TARGET_S * 1000:.0f} ms at {API_TARGET_RATE_RPS:.0f} req/s",
                    measured=f"p99 {duration_text(load.latency.p99)} at "
                    f"{load.answered_rps:.0f} req/s (scheduled {load.target_rps:.0f}/s)",
                    met=at_rate and load.latency.p99 <= API_P99_TARGET_S,
                )
            )
    return targets


def api_document(result: ApiBenchResult, *, command: str) -> dict[str, object]:
    """The JSON document of a ``hearth bench api`` run."""
    options = result.options
    return {
        **document_head("api", command=command, machine=result.machine),
        "requests_per_phase": options.n,
        "warmup_requests": options.warmup,
        "concurrency": options.concurrency,
        "rate_rps": options.rate_rps,
        "open_loop_connections": MAX_IN_FLIGHT,
        "databases": {
            d.name: {
                "version": d.version,
                "endpoints": {route: e.to_dict() for route, e in d.endpoints.items()},
            }
            for d in result.databases
        },
        "notes": list(result.notes),
        "targets": [t.to_dict() for t in api_targets(result)],
    }


def api_tables(result: ApiBenchResult) -> list[Table]:
    """The Rich tables of a ``hearth bench api`` run."""
    table = Table(title=f"API latency ({result.machine.cores} cores)")
    columns = ("database", "route", "load", "n", "req/s", "p50", "p99", "max", "CPU srv/cli")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("database", "route", "load") else "right"
        )
    for database in result.databases:
        for route, endpoint in database.endpoints.items():
            name = f"{database.name} {database.version.split()[0]}"
            closed, opened = endpoint.closed, endpoint.open
            for load, phase in (
                (f"{closed.concurrency} workers", closed),
                (f"{opened.target_rps:.0f}/s open", opened),
            ):
                latency = phase.latency
                table.add_row(
                    name,
                    f"GET {route}",
                    load,
                    str(latency.n),
                    f"{phase.answered_rps:.0f}",
                    duration_text(latency.p50),
                    duration_text(latency.p99),
                    duration_text(latency.max),
                    _cpu(phase.cpu),
                )
    return [machine_table(result.machine), table, targets_table(api_targets(result))]


# ---- shared ----------------------------------------------------------------------------------


def image_facts(image: ImageDir) -> dict[str, object]:
    """Where a bench's image is, and what its manifest says it is."""
    manifest = image.manifest
    return {
        "path": str(image.path),
        "recipe": manifest.recipe if manifest else "unknown",
        "content_hash": manifest.content_hash if manifest else "unknown",
    }


def document_head(benchmark: str, *, command: str, machine: MachineFacts) -> dict[str, object]:
    """The fields every bench's JSON document opens with: what ran, when, and on what."""
    return {
        "benchmark": benchmark,
        "command": command,
        "measured_at": now_text(),
        "machine": machine.to_dict(),
    }


def machine_table(machine: MachineFacts) -> Table:
    """The machine the figures were measured on."""
    table = Table(title="machine", show_header=False)
    table.add_row("CPU", f"{machine.cores} cores, {machine.cpu_model}")
    table.add_row("memory", f"{machine.memory_mib / 1024:.1f} GiB")
    table.add_row("accelerator", f"{machine.accel} ({machine.accel_reason})")
    table.add_row("QEMU", machine.qemu)
    table.add_row("OS, kernel", f"{machine.os}, {machine.kernel}")
    table.add_row("Python, Hearth", f"{machine.python}, {machine.hearth}")
    table.add_row("load average at start", machine.load_average)
    return table


def targets_table(targets: list[Target]) -> Table:
    """Each target, what was measured and whether it is met."""
    table = Table(title="targets")
    table.add_column("target")
    table.add_column("measured")
    table.add_column("status")
    for target in targets:
        table.add_row(
            target.goal,
            target.measured,
            Text("met", style="green") if target.met else Text("not met", style="red"),
        )
    return table


def print_tables(console: Console, tables: list[Table]) -> None:
    """Print tables one after another."""
    for table in tables:
        console.print(table)


def write_json(path: Path, document: dict[str, object]) -> None:
    """Write ``document`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _cpu(cpu: CpuUse) -> str:
    return f"{cpu.server_cores:.2f}/{cpu.client_cores:.2f}"


def now_text() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def durations_table(title: str, label: str, *more: str) -> Table:
    """A table of duration summaries: a row's ``label`` left, then its n, p50, p95 and max
    (``duration_cells``) and the columns ``more``, right-aligned."""
    table = Table(title=title)
    table.add_column(label, justify="left")
    for column in ("n", "p50", "p95", "max", *more):
        table.add_column(column, justify="right")
    return table


def duration_cells(summary: Summary) -> tuple[str, str, str, str]:
    """The n, p50, p95 and max of ``summary`` (seconds) in a ``durations_table``."""
    return (
        str(summary.n),
        duration_text(summary.p50),
        duration_text(summary.p95),
        duration_text(summary.max),
    )


def duration_text(seconds: float) -> str:
    """``seconds`` for a table: milliseconds below one second."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _size(n_bytes: float) -> str:
    if n_bytes >= 2**20:
        return f"{n_bytes / 2**20:.1f} MiB"
    return f"{n_bytes / 2**10:.0f} KiB"

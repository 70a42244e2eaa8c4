"""The report of ``hearth bench run``: its ratios, the verdict on each target, JSON and tables."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from rich.table import Table

from hearth.bench.report import (
    Target,
    document_head,
    duration_cells,
    duration_text,
    durations_table,
    image_facts,
    machine_table,
    targets_table,
)
from hearth.bench.run import TRANSFERS, WARMUP, RunBenchResult
from hearth.bench.run_first_event import PROMPT, RUN_WARMUP, FirstEvents
from hearth.bench.stats import Summary

# The targets, each a ratio to something measured in the same run.
EXEC_ROUND_TRIP_TARGET = 2.0  # exec `true` p50 ≤ 2x the agent's own /health p50
STREAM_TARGET = 0.5  # Hearth's throughput ≥ 0.5x a raw TCP stream's, the same way
RUN_FIRST_EVENT_TARGET = 1.1  # a run's first event p50 ≤ 1.1x the CLI's own, started directly
RUN_FIRST_EVENT_GOAL = (
    f"run: first event through Hearth ≤ {RUN_FIRST_EVENT_TARGET:g}x the same CLI's first event "
    "when started directly in the VM"
)
RUN_FIRST_EVENT_REASON = "not measured: the run part was left out (--no-runs)"


@dataclass(frozen=True, kw_only=True)
class Ratio:
    """Hearth's figure over the same VM's own, and how the issue's target reads it."""

    name: str
    label: str
    value: float
    goal: str
    at_most: float | None = None  # a round trip: the ratio may be at most this
    at_least: float | None = None  # a throughput: the ratio must be at least this

    @property
    def met(self) -> bool:
        """Whether the ratio is on the target's side of its bound."""
        if self.at_most is not None:
            return self.value <= self.at_most
        assert self.at_least is not None
        return self.value >= self.at_least


@dataclass(frozen=True, kw_only=True)
class FirstEventFigures:
    """One vendor CLI's first-event summaries (seconds from the request that started it)."""

    hearth: Summary  # POST …/runs → the first event made from the CLI's output
    direct: Summary  # the agent's POST /exec → the stdout line that event is made from
    hearth_run_started: Summary  # POST …/runs → run.started (not judged)
    direct_first_line: Summary  # the agent's POST /exec → the CLI's first stdout line (same)
    first_event: str  # the type of that first event on Hearth's stream

    @classmethod
    def of(cls, samples: FirstEvents) -> FirstEventFigures:
        """Summarise one vendor's samples."""
        return cls(
            hearth=Summary.of(samples.hearth),
            direct=Summary.of(samples.direct),
            hearth_run_started=Summary.of(samples.hearth_run_started),
            direct_first_line=Summary.of(samples.direct_first_line),
            first_event=samples.first_event,
        )

    @property
    def ratio(self) -> float:
        """Hearth's p50 over the direct p50."""
        return self.hearth.p50 / self.direct.p50


@dataclass(frozen=True, kw_only=True)
class RunFigures:
    """The summaries a ``hearth bench run`` report is made of."""

    exec_round_trip: Summary
    agent_health: Summary
    agent_health_kept_alive: Summary
    agent_exec_round_trip: Summary
    transfers: dict[str, Summary]  # bytes per second, by TRANSFERS key
    first_events: dict[str, FirstEventFigures]  # by provider; empty without the run part

    @classmethod
    def of(cls, result: RunBenchResult) -> RunFigures:
        """Summarise every measurement of ``result``."""
        runs = result.runs.by_provider if result.runs is not None else {}
        return cls(
            exec_round_trip=Summary.of(result.exec_round_trip),
            agent_health=Summary.of(result.agent_health),
            agent_health_kept_alive=Summary.of(result.agent_health_kept_alive),
            agent_exec_round_trip=Summary.of(result.agent_exec_round_trip),
            transfers={name: Summary.of(result.transfers[name]) for name in TRANSFERS},
            first_events={p.value: FirstEventFigures.of(s) for p, s in runs.items()},
        )

    def ratios(self) -> list[Ratio]:
        """Each measured target's ratio, from the p50s."""
        rate = {name: summary.p50 for name, summary in self.transfers.items()}
        return [
            Ratio(
                name="exec_round_trip",
                label="exec `true` (API → exit event) / the agent's /health",
                value=self.exec_round_trip.p50 / self.agent_health.p50,
                goal=f"exec round trip p50 ≤ {EXEC_ROUND_TRIP_TARGET:g}x the agent's own "
                "/health round trip",
                at_most=EXEC_ROUND_TRIP_TARGET,
            ),
            *(
                Ratio(
                    name=name,
                    label=f"{stream.label} / raw TCP {stream.way} the VM",
                    value=rate[stream.hearth] / rate[stream.raw],
                    goal=f"{stream.goal} ≥ {STREAM_TARGET:g}x a raw TCP stream {stream.way} the VM",
                    at_least=STREAM_TARGET,
                )
                for name, stream in _STREAMS.items()
            ),
            *(
                Ratio(
                    name=f"run_first_event_{provider}",
                    label=f"run of {provider}: first event through Hearth / started directly",
                    value=figures.ratio,
                    goal=f"{RUN_FIRST_EVENT_GOAL} ({provider})",
                    at_most=RUN_FIRST_EVENT_TARGET,
                )
                for provider, figures in self.first_events.items()
            ),
        ]

    def targets(self) -> list[Target]:
        """The measured targets of the issue, judged on these figures."""
        return [
            Target(name=r.name, goal=r.goal, measured=self._measured(r), met=r.met)
            for r in self.ratios()
        ]

    def _measured(self, ratio: Ratio) -> str:
        if ratio.name == "exec_round_trip":
            return (
                f"{duration_text(self.exec_round_trip.p50)} / "
                f"{duration_text(self.agent_health.p50)} = {ratio_text(ratio.value)}"
            )
        if ratio.name.startswith("run_first_event_"):
            run = self.first_events[ratio.name.removeprefix("run_first_event_")]
            return (
                f"{duration_text(run.hearth.p50)} / {duration_text(run.direct.p50)} "
                f"= {ratio_text(ratio.value)}"
            )
        stream = _STREAMS[ratio.name]
        return (
            f"{rate_text(self.transfers[stream.hearth].p50)} / "
            f"{rate_text(self.transfers[stream.raw].p50)} = {ratio_text(ratio.value)}"
        )


@dataclass(frozen=True)
class _Stream:
    """A throughput ratio: a Hearth transfer over the raw TCP stream the same way."""

    hearth: str  # the TRANSFERS key of Hearth's transfer
    raw: str  # the TRANSFERS key of its raw counterpart: "raw_out" or "raw_in"
    label: str  # what the table calls Hearth's side
    goal: str  # what the goal calls it

    @property
    def way(self) -> str:
        """Which way the bytes cross the VM's edge, as the label and goal say it."""
        return "into" if self.raw == "raw_in" else "out of"


# The throughput ratios, by name, in the order of the report.
_STREAMS = {
    "exec_output": _Stream("exec_output", "raw_out", "exec output", "exec output stream"),
    "file_upload": _Stream("upload", "raw_in", "file upload", "file upload"),
    "file_download": _Stream("download", "raw_out", "file download", "file download"),
}


def run_document(result: RunBenchResult, *, command: str) -> dict[str, object]:
    """The JSON document of a ``hearth bench run`` run."""
    figures = RunFigures.of(result)
    options = result.options
    return {
        **document_head("run", command=command, machine=result.machine),
        "image": image_facts(options.image),
        "vm": dict(result.vm),
        "n": options.n,
        "warmup": WARMUP,
        "bytes": options.bytes,
        "rounds": options.rounds,
        "round_trips": {
            "exec": figures.exec_round_trip.seconds(),
            "agent_health": figures.agent_health.seconds(),
            "agent_health_kept_alive": figures.agent_health_kept_alive.seconds(),
            "agent_exec": figures.agent_exec_round_trip.seconds(),
        },
        "transfers": {
            name: {
                "label": TRANSFERS[name],
                **_rates(summary),
                "cpu_cores_mean": mean_cpu(result, name),
            }
            for name, summary in figures.transfers.items()
        },
        "runs": _runs_document(result, figures),
        "ratios": {r.name: r.value for r in figures.ratios()},
        "not_measured": []
        if result.runs is not None
        else [
            {
                "name": "run_first_event",
                "goal": RUN_FIRST_EVENT_GOAL,
                "reason": RUN_FIRST_EVENT_REASON,
            }
        ],
        "targets": [t.to_dict() for t in figures.targets()],
    }


def _runs_document(result: RunBenchResult, figures: RunFigures) -> dict[str, object] | None:
    """The run part's figures per vendor and its VM; None when it was left out."""
    runs = result.runs
    if runs is None:
        return None
    return {
        # The VM booted a copy of it that also trusts a CA made for the run (removed after).
        "image": image_facts(runs.options.image),
        "vm": dict(runs.vm),
        "prompt": PROMPT,
        "rounds": runs.options.rounds,
        "warmup": RUN_WARMUP,
        "providers": {
            provider: {
                "first_event": run.first_event,
                "hearth": run.hearth.seconds(),
                "direct": run.direct.seconds(),
                "hearth_run_started": run.hearth_run_started.seconds(),
                "direct_first_line": run.direct_first_line.seconds(),
            }
            for provider, run in figures.first_events.items()
        },
    }


def run_tables(result: RunBenchResult) -> list[Table]:
    """The Rich tables of a ``hearth bench run`` run."""
    figures = RunFigures.of(result)
    options = result.options
    where = f"({result.machine.accel}, {result.machine.cores} cores)"
    trips = durations_table(
        f"round trips, {options.n} each after {WARMUP} warm-up {where}", "round trip"
    )
    for label, summary in (
        ("exec `true`: POST …/exec → exit event", figures.exec_round_trip),
        ("agent GET /health, a connection per call (as the controller)", figures.agent_health),
        ("agent GET /health, kept-alive connection", figures.agent_health_kept_alive),
        (
            "exec `true` straight through the agent (as the controller)",
            figures.agent_exec_round_trip,
        ),
    ):
        trips.add_row(label, *duration_cells(summary))

    streams = Table(title=f"transfers of {_size(options.bytes)}, at the client {where}")
    for column in ("transfer", "n", "p50", "min", "max", "CPU qemu/ctl/cli"):
        streams.add_column(column, justify="left" if column == "transfer" else "right")
    for name, summary in figures.transfers.items():
        cells = (rate_text(summary.p50), rate_text(summary.min), rate_text(summary.max))
        cpu = mean_cpu(result, name)
        cores = "/".join(f"{cpu.get(k, 0.0):.2f}" for k in ("qemu", "controller", "client"))
        streams.add_row(TRANSFERS[name], str(summary.n), *cells, cores)

    ratios = Table(title="ratios (Hearth / the same VM's own path, from the p50s)")
    ratios.add_column("ratio")
    ratios.add_column("measured", justify="right")
    for ratio in figures.ratios():
        ratios.add_row(ratio.label, ratio_text(ratio.value))
    if result.runs is None:
        ratios.add_row("run: first event through Hearth / started directly", RUN_FIRST_EVENT_REASON)
    vm = result.vm
    facts = Table(show_header=False, title="VM")
    facts.add_row("CLI VM", f"{vm.get('id')}, {vm.get('vcpus')} vCPU, {vm.get('mem_mib')} MiB")
    create_s = vm.get("create_s")
    created = duration_text(create_s) if isinstance(create_s, float) else "?"
    facts.add_row("created by", f"{vm.get('boot_mode')} start, {created} (not a target)")
    if result.runs is not None:
        run_vm = result.runs.vm
        facts.add_row(
            "run part's CLI VM",
            f"{run_vm.get('id')}, {run_vm.get('vcpus')} vCPU, {run_vm.get('mem_mib')} MiB",
        )
    tables = [machine_table(result.machine), facts, trips, streams]
    if figures.first_events:
        tables.append(_first_events_table(result, figures, where))
    return [*tables, ratios, targets_table(figures.targets())]


def _first_events_table(result: RunBenchResult, figures: RunFigures, where: str) -> Table:
    """Per vendor: Hearth's first event and the same line read directly, p50 of the rounds."""
    assert result.runs is not None
    table = Table(
        title=f"runs ({PROMPT!r}): first event from the CLI's output, p50 of "
        f"{result.runs.options.rounds} after {RUN_WARMUP} warm-up {where}",
        caption="not judged: started = Hearth's run.started; first line = the CLI's first "
        "stdout line, directly",
    )
    # Names and event types stay whole; the headers of the figures wrap in a narrow terminal
    # (the ratios table that follows has each vendor's ratio).
    table.add_column("CLI", no_wrap=True)
    table.add_column("first event", no_wrap=True)
    for column in ("through Hearth", "directly", "started", "first line"):
        table.add_column(column, justify="right")
    for provider, run in figures.first_events.items():
        table.add_row(
            provider,
            run.first_event,
            duration_text(run.hearth.p50),
            duration_text(run.direct.p50),
            duration_text(run.hearth_run_started.p50),
            duration_text(run.direct_first_line.p50),
        )
    return table


def mean_cpu(result: RunBenchResult, name: str) -> dict[str, float]:
    """The cores each process used during transfer ``name``, averaged over the rounds."""
    samples = result.transfer_cpu.get(name, [])
    if not samples:
        return {}
    return {k: statistics.fmean(s[k] for s in samples) for k in samples[0]}


def _rates(summary: Summary) -> dict[str, object]:
    return {
        "n": summary.n,
        "p50_bytes_per_s": summary.p50,
        "min_bytes_per_s": summary.min,
        "max_bytes_per_s": summary.max,
        "samples_bytes_per_s": list(summary.samples),
    }


def ratio_text(value: float) -> str:
    """A ratio for a table: two decimals, three below 1."""
    return f"{value:.2f}x" if value >= 1 else f"{value:.3f}x"


def rate_text(bytes_per_s: float) -> str:
    """A throughput for a table, in MiB/s."""
    return f"{bytes_per_s / 2**20:.1f} MiB/s"


def _size(n_bytes: int) -> str:
    if n_bytes >= 2**20:
        return f"{n_bytes / 2**20:g} MiB"
    return f"{n_bytes} B"

"""The load phases' results: the JSON shape of each phase, its own load first."""

from __future__ import annotations

import pytest

from hearth.bench.load import ClosedLoopResult, CpuUse, OpenLoopResult
from hearth.bench.stats import Summary

_LATENCY = Summary.of([0.001, 0.002, 0.003, 0.004])
_CPU = CpuUse(client_cores=0.5, server_cores=0.75)


@pytest.mark.parametrize(
    ("phase", "load"),
    [
        (
            ClosedLoopResult(concurrency=10, latency=_LATENCY, wall_s=0.5, cpu=_CPU),
            {"concurrency": 10, "throughput_rps": 8.0},  # 4 answers in 0.5 s
        ),
        (
            OpenLoopResult(target_rps=500.0, latency=_LATENCY, wall_s=0.01, cpu=_CPU),
            {"target_rps": 500.0, "achieved_rps": 400.0},  # 4 answers in 0.01 s
        ),
    ],
)
def test_a_load_phase_reports_its_load_then_its_wall_time_cpu_and_latency(
    phase: ClosedLoopResult | OpenLoopResult, load: dict[str, float]
) -> None:
    doc = phase.to_dict()

    assert list(doc)[: len(load)] == list(load)
    assert {k: doc[k] for k in load} == pytest.approx(load)
    assert {k: v for k, v in doc.items() if k not in load} == {
        "wall_s": phase.wall_s,
        "client_cpu_cores": 0.5,
        "server_cpu_cores": 0.75,
        **_LATENCY.seconds(with_samples=False),
    }

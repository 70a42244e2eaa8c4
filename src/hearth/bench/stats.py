"""Summaries of timing samples: nearest-rank percentiles, so every figure is an observed value."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from hearth.bench.errors import BenchError


def percentile(samples: Sequence[float], pct: float) -> float:
    """The nearest-rank ``pct`` percentile (with 5 samples, p95 is the largest)."""
    if not samples:
        raise BenchError("no samples to summarise")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Count, percentiles and extremes of a set of samples (seconds, bytes, …)."""

    n: int
    p50: float
    p95: float
    p99: float
    min: float
    max: float
    mean: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        """Summarise ``samples`` (at least one)."""
        return cls(
            n=len(samples),
            p50=percentile(samples, 50),
            p95=percentile(samples, 95),
            p99=percentile(samples, 99),
            min=min(samples),
            max=max(samples),
            mean=statistics.fmean(samples),
            samples=tuple(samples),
        )

    def seconds(self, *, with_samples: bool = True) -> dict[str, object]:
        """The JSON shape for durations: ``n``, ``p50_s``, ``p95_s``, ``max_s``, …"""
        doc: dict[str, object] = {
            "n": self.n,
            "p50_s": self.p50,
            "p95_s": self.p95,
            "p99_s": self.p99,
            "min_s": self.min,
            "max_s": self.max,
            "mean_s": self.mean,
        }
        if with_samples:
            doc["samples_s"] = list(self.samples)
        return doc

    def bytes(self) -> dict[str, object]:
        """The JSON shape for sizes: ``n``, ``p50_bytes``, ``max_bytes``, ``samples_bytes``."""
        return {
            "n": self.n,
            "p50_bytes": int(self.p50),
            "max_bytes": int(self.max),
            "samples_bytes": [int(s) for s in self.samples],
        }

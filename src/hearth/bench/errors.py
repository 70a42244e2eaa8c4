"""The benchmarks' error: a run that could not measure what it set out to (or left something)."""

from __future__ import annotations

from hearth.errors import HearthError


class BenchError(HearthError):
    """A benchmark failed: a request errored, a VM took the wrong path, or a resource leaked."""

    code = "bench_failed"
    http_status = 500

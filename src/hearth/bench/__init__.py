"""Benchmarks that measure Hearth against its targets and against the original controller.

``hearth bench vm`` times cold boots, snapshot restores, warm-pool hand-outs, concurrent creates,
per-VM disk and memory, and destroys, next to the original controller's method measured in the
same run (``baseline``). ``hearth bench api`` measures the REST API's latency and throughput on
SQLite and PostgreSQL. ``hearth bench auth`` measures the controller's own time in a real auth
flow (real OAuth server, real Browser VM, a scripted user). Each prints Rich tables and can write
a JSON document.
"""

from __future__ import annotations

from hearth.bench.errors import BenchError
from hearth.bench.stats import Summary

__all__ = ["BenchError", "Summary"]

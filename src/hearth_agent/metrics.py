"""Agent metrics rendered by hand in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from enum import StrEnum

from hearth_agent.login import LoginOutcome
from hearth_agent.probe import ProbeOutcome

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

KNOWN_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"})


class WriteOutcome(StrEnum):
    """Result label of a credential write."""

    OK = "ok"  # stored
    INVALID = "invalid"  # refused: malformed JSON or failed validation
    ERROR = "error"  # accepted but the filesystem failed


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _counter_family(
    name: str,
    help_text: str,
    label_names: tuple[str, ...],
    series: Iterable[tuple[tuple[str, ...], int]],
) -> list[str]:
    """The HELP and TYPE lines of counter ``name``, then one sample per labelled series."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for values, count in series:
        lines.append(f"{name}{_labels(tuple(zip(label_names, values, strict=True)))} {count}")
    return lines


class AgentMetrics:
    """Thread-safe counters for requests, credential writes, TCP probes and logins, plus uptime.

    Logins are counted per provider of ``providers``; every series exists from the start.
    """

    def __init__(self, *, version: str, providers: tuple[str, ...]) -> None:
        self._version = version
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, str]] = Counter()
        # Every provider/outcome series exists from the start so rates work from the first scrape.
        self._writes: Counter[tuple[str, str]] = Counter(
            {(provider, outcome.value): 0 for provider in providers for outcome in WriteOutcome}
        )
        self._probes: Counter[tuple[str]] = Counter(
            {(outcome.value,): 0 for outcome in ProbeOutcome}
        )
        self._logins: Counter[tuple[str, str]] = Counter(
            {(provider, outcome.value): 0 for provider in providers for outcome in LoginOutcome}
        )

    def uptime(self) -> float:
        """Seconds since the agent started."""
        return time.monotonic() - self._started

    def observe_request(self, *, route: str, method: str, status: int) -> None:
        """Count one HTTP response; ``route`` is the template, never the raw path."""
        label = method if method in KNOWN_METHODS else "other"
        with self._lock:
            self._requests[(route, label, str(status))] += 1

    def observe_write(self, *, provider: str, outcome: WriteOutcome) -> None:
        """Count one credential write attempt for a known provider."""
        with self._lock:
            self._writes[(provider, outcome.value)] += 1

    def observe_probe(self, outcome: ProbeOutcome) -> None:
        """Count one TCP probe that ran (refused bodies are not probes)."""
        with self._lock:
            self._probes[(outcome.value,)] += 1

    def observe_login(self, *, provider: str, outcome: LoginOutcome) -> None:
        """Count one login session that ended (captured, failed, timed out or cancelled)."""
        with self._lock:
            self._logins[(provider, outcome.value)] += 1

    def render(self) -> str:
        """The exposition text, one family after another, ending with a newline."""
        with self._lock:
            requests = sorted(self._requests.items())
            writes = sorted(self._writes.items())
            probes = sorted(self._probes.items())
            logins = sorted(self._logins.items())
        lines = [
            *_counter_family(
                "hearth_agent_http_requests_total",
                "HTTP responses by route template, method and status.",
                ("route", "method", "status"),
                requests,
            ),
            *_counter_family(
                "hearth_agent_credential_writes_total",
                "Credential write attempts by provider and result.",
                ("provider", "result"),
                writes,
            ),
            *_counter_family(
                "hearth_agent_probes_total",
                "TCP probes run from inside the VM, by result.",
                ("result",),
                probes,
            ),
            *_counter_family(
                "hearth_agent_logins_total",
                "Login sessions that ended, by provider and outcome.",
                ("provider", "outcome"),
                logins,
            ),
            "# HELP hearth_agent_uptime_seconds Seconds since the agent started.",
            "# TYPE hearth_agent_uptime_seconds gauge",
            f"hearth_agent_uptime_seconds {self.uptime():.3f}",
            "# HELP hearth_agent_info Agent build information.",
            "# TYPE hearth_agent_info gauge",
            f"hearth_agent_info{_labels((('version', self._version),))} 1",
        ]
        return "\n".join(lines) + "\n"

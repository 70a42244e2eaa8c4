"""The Prometheus alert rules in ``deploy/prometheus`` load, pass their unit tests, and watch
series the controller really exports.

promtool (Debian's, fetched by ``bash scripts/promtool.sh``, named by ``HEARTH_PROMTOOL``) checks
the rules and runs ``hearth-alerts.test.yml``. Those tests feed promtool hand-written series, so
they prove nothing about the controller unless the series are its own: the other tests render a
real ``ControllerMetrics`` exposition, with every labelled metric touched with the label values
the controller uses, and hold against it every metric name, label name and label value that the
rules (selectors, ``by``/``without``/``on``/``ignoring`` clauses, ``$labels`` in annotations) and
the promtool tests' input series use. Only the scrape's own labels (``instance``, ``job``) may be
added. Those checks never skip; checks of the checker show a misspelled metric, label or value
is caught.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hearth.auth.states import TERMINAL
from hearth.control.vms import ACTIVE
from hearth.credentials.expiry import STATES
from hearth.events.types import EventType
from hearth.metrics import ControllerMetrics
from hearth.network.egress import EgressOutcome
from hearth.vm.types import BootMode, VmType
from hearth_agent.wire import Provider

ROOT = Path(__file__).resolve().parents[2]
RULES = Path("deploy/prometheus/hearth-alerts.yml")
RULE_TESTS = Path("deploy/prometheus/hearth-alerts.test.yml")
# Labels Prometheus adds to every scraped series; the controller does not export them.
TARGET_LABELS = frozenset({"instance", "job"})
# Labels whose values are open-ended (versions, routes): any value a rule names is plausible.
OPEN_VALUES = {
    "hearth_vm_agent_versions": {"version"},
    "hearth_http_requests": {"method", "route", "status"},
    "hearth_http_request_duration_seconds": {"route", "le"},
    "hearth_vm_create_to_healthy_seconds": {"le"},
}

_AGGREGATION = r"\b(?:sum|min|max|avg|group|count|stddev|stdvar|topk|bottomk|quantile|count_values)"
_CLAUSE_BEFORE = re.compile(_AGGREGATION + r"\s*\b(by|without)\s*\(([^)]*)\)\s*\(")
_CLAUSE_AFTER = re.compile(_AGGREGATION + r"\s*\(")
_CLAUSE_TAIL = re.compile(r"\s*\b(by|without)\s*\(([^)]*)\)")
_MATCHING = re.compile(r"\b(on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_METRIC = re.compile(r"(?<![\w:])(hearth_[a-z0-9_]+)(?![\w:])")
_RECORDED_NAME = re.compile(r"(?<![\w:])([a-zA-Z_]\w*:[\w:]*)(?![\w:])")
_SELECTOR = re.compile(r"(?<![\w:])(hearth_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_SERIES = re.compile(r"^\s*([a-zA-Z_:][\w:]*)\s*(?:\{(.*)\})?\s*$")
_WORDS = re.compile(r"[\w.-]+(?:\|[\w.-]+)*")


# ------------------------------------------------------------------------------------ promtool


def _promtool() -> str | None:
    return os.environ.get("HEARTH_PROMTOOL") or shutil.which("promtool")


@pytest.fixture
def promtool() -> str:
    """The promtool binary, or a skip naming the script that fetches it."""
    path = _promtool()
    if path is None:
        pytest.skip("no promtool: run `bash scripts/promtool.sh` and set HEARTH_PROMTOOL to it")
    assert os.access(path, os.X_OK), f"HEARTH_PROMTOOL={path} is not an executable"
    return path


def _run_promtool(promtool: str, *args: str) -> None:
    result = subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_promtool_accepts_the_rules(promtool: str) -> None:
    _run_promtool(promtool, "check", "rules", str(RULES))


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    _run_promtool(promtool, "test", "rules", str(RULE_TESTS))


# ------------------------------------------------------------ what the controller exports


@dataclass
class Series:
    """One exported sample name: its family and the values seen per label."""

    family: str
    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def _touched_metrics() -> ControllerMetrics:
    """A real registry with every labelled metric touched, with the values the controller uses."""
    metrics = ControllerMetrics()
    for status in ACTIVE:  # VmService.refresh_gauges sets exactly these
        metrics.vms.labels(status=status.value).set(1)
    for mode in BootMode:
        metrics.create_to_healthy.labels(boot_mode=mode.value).observe(1.5)
    # The stages VmService counts (a VM lost across a controller restart is only told, as a
    # vm.failed event with stage "restart"; the counter does not see it).
    for stage in ("boot", "running", "unhealthy"):
        metrics.failures.labels(stage=stage).inc()
    metrics.http_requests.labels(method="GET", route="/api/vms/{vm_id}", status="200").inc()
    metrics.http_latency.labels(route="/api/vms/{vm_id}").observe(0.01)
    for vm_type in VmType:
        metrics.pool_size.labels(vm_type=vm_type.value).set(2)
        metrics.pool_handouts.labels(vm_type=vm_type.value).inc()
    for egress in EgressOutcome:
        metrics.egress_requests.labels(outcome=egress.value).inc()
    for direction in ("up", "down"):
        metrics.egress_bytes.labels(direction=direction).inc(512)
    for event_type in EventType:
        metrics.events.labels(type=event_type.value).inc()
    for delivery in ("delivered", "retry", "failed"):  # WebhookDispatcher._attempt's outcomes
        metrics.webhook_deliveries.labels(outcome=delivery).inc()
    metrics.webhook_backlog.set(3)
    for provider in Provider:
        for ended in TERMINAL:  # LoginFlow counts every login that ends, by how
            metrics.auth_sessions.labels(provider=provider.value, outcome=ended.value).inc()
        for state in STATES:
            metrics.credentials.labels(provider=provider.value, state=state).set(1)
    metrics.agent_versions.labels(version="0.4.1").set(12)
    metrics.agents_outdated.set(0)
    for result in ("ok", "missed"):
        metrics.heartbeats.labels(result=result).inc()
    return metrics


def _exported_from(exposition: str) -> tuple[dict[str, Series], list[str]]:
    """Sample name → its series; and the families that have no sample at all."""
    exported: dict[str, Series] = {}
    empty = []
    for family in text_string_to_metric_families(exposition):
        if not family.samples:
            empty.append(family.name)
        for sample in family.samples:
            series = exported.setdefault(sample.name, Series(family.name))
            for name, value in sample.labels.items():
                series.labels[name].add(value)
    return exported, empty


EXPORTED, EMPTY_FAMILIES = _exported_from(_touched_metrics().render().decode())


def test_every_metric_has_series_to_check_against() -> None:
    # A labelled metric shows no series until touched: one added to ControllerMetrics needs a
    # line in _touched_metrics, or the rules could not be held against its labels.
    assert EMPTY_FAMILIES == []
    assert "hearth_vm_failures_total" in EXPORTED
    assert EXPORTED["hearth_vms"].labels["status"] >= {"ready", "unhealthy"}


# ------------------------------------------------------------------- reading rules and tests


def _load(path: Path) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def _rules(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in document["groups"] for rule in group["rules"]]


def _recorded(rules: list[dict[str, Any]]) -> dict[str, str]:
    return {rule["record"]: rule["expr"] for rule in rules if "record" in rule}


def _rule_name(rule: Mapping[str, Any]) -> str:
    name = rule.get("alert") or rule.get("record")
    return f"{name} ({rule.get('labels', {}).get('severity', 'recording')})"


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def _metrics_in(expr: str) -> set[str]:
    return set(_METRIC.findall(_without_strings(expr)))


def _closing(expr: str, opening: int) -> int:
    """Index of the parenthesis closing the one at ``opening``."""
    depth = 0
    for index in range(opening, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[index], 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def _aggregations(expr: str) -> Iterator[tuple[str, set[str], str]]:
    """Each aggregation with a label clause: (by|without, its labels, its argument)."""
    for match in _CLAUSE_BEFORE.finditer(expr):
        opening = match.end() - 1
        yield match[1], _label_list(match[2]), expr[opening : _closing(expr, opening) + 1]
    for match in _CLAUSE_AFTER.finditer(expr):
        opening = match.end() - 1
        closing = _closing(expr, opening)
        if tail := _CLAUSE_TAIL.match(expr, closing + 1):
            yield tail[1], _label_list(tail[2]), expr[opening : closing + 1]


def _label_list(text: str) -> set[str]:
    return {label.strip() for label in text.split(",") if label.strip()}


def _value_problems(where: str, series: Series, label: str, op: str, value: str) -> list[str]:
    if op in ("!=", "!~") or label in OPEN_VALUES.get(series.family, set()):
        return []
    seen = series.labels[label]
    if op == "=" or _WORDS.fullmatch(value):
        wanted = value.split("|") if op == "=~" else [value]
        missing = [one for one in wanted if one not in seen]
        return [
            f"{where}: {label}={one!r} is never exported (seen: {sorted(seen)})" for one in missing
        ]
    if not any(re.fullmatch(value, one) for one in seen):
        return [f"{where}: {label}=~{value!r} matches no exported value ({sorted(seen)})"]
    return []


def _matcher_problems(where: str, name: str, series: Series, matchers: str) -> list[str]:
    """What the label matchers of one selector of ``name`` ask for that is never exported."""
    problems: list[str] = []
    for label, op, value in _MATCHER.findall(matchers):
        if label in TARGET_LABELS:
            continue
        if label not in series.labels:
            problems.append(f"{where}: {name} has no label {label!r}")
        else:
            problems += _value_problems(where, series, label, op, value)
    return problems


# ------------------------------------------------------------------------------- the checkers


def rule_problems(rules: list[dict[str, Any]], exported: Mapping[str, Series]) -> list[str]:
    """Every metric, label and label value the rules name that the controller does not export."""
    problems: list[str] = []
    recorded = _recorded(rules)

    def raw_metrics(expr: str, seen: frozenset[str] = frozenset()) -> set[str]:
        names = _metrics_in(expr)
        for name in set(_RECORDED_NAME.findall(_without_strings(expr))) & recorded.keys() - seen:
            names |= raw_metrics(recorded[name], seen | {name})
        return names

    def labels_of(names: set[str]) -> set[str]:
        return {label for name in names if name in exported for label in exported[name].labels}

    for rule in rules:
        where, expr = _rule_name(rule), rule["expr"]
        for name in sorted(_metrics_in(expr) - exported.keys()):
            problems.append(f"{where}: {name} is not exported by the controller")
        for name in sorted(set(_RECORDED_NAME.findall(_without_strings(expr))) - recorded.keys()):
            problems.append(f"{where}: {name} is recorded by no rule")
        for name, matchers in _SELECTOR.findall(expr):
            if name not in exported:
                continue
            problems += _matcher_problems(where, name, exported[name], matchers)
        for kind, labels, argument in _aggregations(expr):
            for name in sorted(_metrics_in(argument) & exported.keys()):
                for label in sorted(labels - TARGET_LABELS - set(exported[name].labels)):
                    problems.append(f"{where}: {kind} ({label}) over {name}, which has no {label}")
        known = labels_of(raw_metrics(expr)) | TARGET_LABELS
        for kind, labels in _MATCHING.findall(expr):
            for label in sorted(_label_list(labels) - known):
                problems.append(f"{where}: {kind} ({label}): no metric of the rule has it")
        for text in rule.get("annotations", {}).values():
            for label in sorted(
                set(re.findall(r"\$labels\.(\w+)", text)) - known - set(rule.get("labels", {}))
            ):
                problems.append(f"{where}: annotation names $labels.{label}, which it never has")
    return problems


def rule_test_problems(
    tests: Mapping[str, Any], rules: list[dict[str, Any]], exported: Mapping[str, Series]
) -> list[str]:
    """Every input series (name, label, value) of the promtool tests that is never exported."""
    problems: list[str] = []
    recorded = _recorded(rules)
    for case in tests["tests"]:
        for item in case.get("input_series", []):
            where = f"test {case.get('name')!r}: {item['series']}"
            match = _SERIES.match(item["series"])
            if match is None:
                problems.append(f"{where}: not a series")
                continue
            name, matchers = match[1], match[2] or ""
            if name in recorded:
                continue
            if name not in exported:
                problems.append(f"{where}: {name} is not exported by the controller")
                continue
            problems += _matcher_problems(where, name, exported[name], matchers)
        for expression in case.get("promql_expr_test", []):
            for name in sorted(_metrics_in(expression["expr"]) - exported.keys()):
                problems.append(f"test {case.get('name')!r}: {name} is not exported")
    return problems


# ------------------------------------------------------------- the rules against the exposition


def test_rules_use_only_metrics_labels_and_values_the_controller_exports() -> None:
    rules = _rules(_load(RULES))
    assert {rule.get("alert") for rule in rules} >= {
        "HearthVmFailures",
        "HearthVmsUnhealthy",
        "HearthAuthFailureRatioHigh",
        "HearthCredentialsExpiring",
        "HearthWebhookBacklog",
        "HearthVmAgentsOutdated",
    }
    assert rule_problems(rules, EXPORTED) == []


def test_promtool_tests_feed_only_series_the_controller_exports() -> None:
    rules = _rules(_load(RULES))
    tests = _load(RULE_TESTS)
    assert rule_test_problems(tests, rules, EXPORTED) == []


def test_every_alert_has_a_promtool_case_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = {rule["alert"] for rule in _rules(_load(RULES)) if "alert" in rule}
    fires, silent = set(), set()
    for case in _load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts - fires == set()
    assert alerts - silent == set()


# ----------------------------------------------------------------------- the checker's teeth


def _rule(expr: str, **annotations: str) -> dict[str, Any]:
    return {
        "alert": "Probe",
        "expr": expr,
        "labels": {"severity": "warning"},
        "annotations": annotations,
    }


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("increase(hearth_vm_failure_total[5m]) > 0", "hearth_vm_failure_total is not exported"),
        ('hearth_vms{state="ready"} > 0', "has no label 'state'"),
        ('hearth_vms{status="unheathy"} > 0', "status='unheathy' is never exported"),
        ('hearth_vms{status=~"ready|failed"} > 0', "status='failed' is never exported"),
        ('hearth_credentials{state=~"exp.*x"} > 0', "matches no exported value"),
        ("sum by (provider) (hearth_vms) > 0", "by (provider) over hearth_vms"),
        ("hearth_webhook_backlog > on (provider) hearth_vm_agents_outdated", "on (provider)"),
        ("job:hearth_vm_boots:rate5m > 0", "job:hearth_vm_boots:rate5m is recorded by no rule"),
    ],
)
def test_rule_checker_catches(expr: str, problem: str) -> None:
    problems = rule_problems([_rule(expr)], EXPORTED)
    assert any(problem in one for one in problems), problems


def test_rule_checker_catches_an_annotation_naming_a_label_the_alert_lacks() -> None:
    rule = _rule("hearth_webhook_backlog > 100", summary="{{ $labels.provider }}")
    assert rule_problems([rule], EXPORTED) == [
        "Probe (warning): annotation names $labels.provider, which it never has"
    ]


def test_rule_checker_accepts_scrape_labels_and_recorded_series() -> None:
    rules = [
        {
            "record": "job:hearth_backlog:max",
            "expr": "max without (instance) (hearth_webhook_backlog)",
        },
        _rule("job:hearth_backlog:max > 100", summary="{{ $labels.job }}"),
    ]
    assert rule_problems(rules, EXPORTED) == []


def test_promtool_test_checker_catches_series_the_controller_does_not_export() -> None:
    tests = {
        "tests": [
            {
                "name": "typos",
                "input_series": [
                    {
                        "series": 'hearth_vm_failure_total{stage="boot", job="hearth"}',
                        "values": "0",
                    },
                    {"series": 'hearth_vms{state="ready", instance="a"}', "values": "1"},
                    {
                        "series": 'hearth_auth_sessions_total{provider="claude", outcome="failed"}',
                        "values": "1",
                    },
                    {
                        "series": 'hearth_vms{status="ready", instance="a", job="hearth"}',
                        "values": "1",
                    },
                ],
            }
        ]
    }
    problems = rule_test_problems(tests, [], EXPORTED)
    assert len(problems) == 3, problems
    assert "hearth_vm_failure_total is not exported by the controller" in problems[0]
    assert "hearth_vms has no label 'state'" in problems[1]
    assert "provider='claude' is never exported" in problems[2]

"""Prometheus text rendering of the agent's counters."""

from __future__ import annotations

from hearth_agent.metrics import AgentMetrics, WriteOutcome
from hearth_agent.probe import ProbeOutcome


def test_render_counts_requests_by_route_template_and_writes_by_result() -> None:
    metrics = AgentMetrics(version="0.1.0", providers=("codex", "oidc"))
    metrics.observe_request(route="/credentials/{provider}", method="PUT", status=200)
    metrics.observe_request(route="/credentials/{provider}", method="PUT", status=200)
    metrics.observe_request(route="unmatched", method="BREW", status=501)
    metrics.observe_write(provider="codex", outcome=WriteOutcome.INVALID)

    text = metrics.render()

    assert text.endswith("\n")
    lines = text.splitlines()
    assert (
        'hearth_agent_http_requests_total{route="/credentials/{provider}",method="PUT",'
        'status="200"} 2'
    ) in lines
    assert (
        'hearth_agent_http_requests_total{route="unmatched",method="other",status="501"} 1' in lines
    )
    assert 'hearth_agent_credential_writes_total{provider="codex",result="invalid"} 1' in lines
    assert 'hearth_agent_credential_writes_total{provider="oidc",result="ok"} 0' in lines
    assert 'hearth_agent_info{version="0.1.0"} 1' in lines
    assert "# TYPE hearth_agent_http_requests_total counter" in lines
    assert "# TYPE hearth_agent_uptime_seconds gauge" in lines


def test_every_probe_result_series_exists_from_the_start() -> None:
    metrics = AgentMetrics(version="0.1.0", providers=())
    metrics.observe_probe(ProbeOutcome.TIMEOUT)

    lines = metrics.render().splitlines()

    assert "# TYPE hearth_agent_probes_total counter" in lines
    assert 'hearth_agent_probes_total{result="timeout"} 1' in lines
    for result in ("connected", "refused", "error"):
        assert f'hearth_agent_probes_total{{result="{result}"}} 0' in lines


def test_label_values_are_escaped() -> None:
    metrics = AgentMetrics(version='1"\\\n', providers=())
    assert 'hearth_agent_info{version="1\\"\\\\\\n"} 1' in metrics.render()

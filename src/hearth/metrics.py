"""The controller's Prometheus metrics, on a registry of its own (one per app instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BOOT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 12, 20, 30, 60, 120)
# Where a VM can fail: its boot, its workspace's attach, while it runs (its VMM died), found
# gone at a controller restart, its agent silent past the unhealthy deadline, a hibernation or
# a wake that left nothing to wake.
FAILURE_STAGES = ("boot", "workspace", "running", "restart", "unhealthy", "hibernate", "wake")
# The methods counted by name in ``hearth_http_requests_total``; any other is "other", so a
# client inventing methods cannot make series without end.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)


class ControllerMetrics:
    """Every metric the controller exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.vms = Gauge("hearth_vms", "VMs by status", ["status"], registry=self.registry)
        self.create_to_healthy = Histogram(
            "hearth_vm_create_to_healthy_seconds",
            "Seconds from a create request to a healthy, claimed agent",
            ["boot_mode"],
            buckets=_BOOT_BUCKETS,
            registry=self.registry,
        )
        self.failures = Counter(
            "hearth_vm_failures_total", "VM failures by stage", ["stage"], registry=self.registry
        )
        self.http_requests = Counter(
            "hearth_http_requests_total",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "hearth_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self.pool_size = Gauge(
            "hearth_pool_size",
            "Healthy unassigned VMs in the warm pool",
            ["vm_type"],
            registry=self.registry,
        )
        self.pool_handouts = Counter(
            "hearth_pool_handouts_total",
            "VMs handed out from the warm pool",
            ["vm_type"],
            registry=self.registry,
        )
        self.egress_requests = Counter(
            "hearth_egress_requests_total",
            "CONNECT requests to the egress proxies (logins' Browser VMs, CLI VMs), by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.egress_bytes = Counter(
            "hearth_egress_bytes_total",
            "Bytes through the egress proxies' tunnels (up: from the VM; down: to it)",
            ["direction"],
            registry=self.registry,
        )
        self.events = Counter(
            "hearth_events_total",
            "Events written to the event log, by type",
            ["type"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "hearth_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered, retry, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_backlog = Gauge(
            "hearth_webhook_backlog",
            "Webhook deliveries not yet accepted by their receiver (pending)",
            registry=self.registry,
        )
        self.egress_tunnels_open = Gauge(
            "hearth_egress_tunnels_open",
            "Egress proxy tunnels currently piping bytes",
            registry=self.registry,
        )

        self.auth_sessions = Counter(
            "hearth_auth_sessions_total",
            "Logins that ended, by provider and outcome (completed, failed, timeout, cancelled)",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.credentials = Gauge(
            "hearth_credentials",
            "Credentials in the vault by provider and state (valid, expiring within "
            "HEARTH_CREDENTIAL_EXPIRING_S, expired, needs_login: the provider refused its "
            "refresh, unknown: no expiry known)",
            ["provider", "state"],
            registry=self.registry,
        )
        self.agent_versions = Gauge(
            "hearth_vm_agent_versions",
            "Running VMs by the agent version they last reported",
            ["version"],
            registry=self.registry,
        )
        self.agents_outdated = Gauge(
            "hearth_vm_agents_outdated",
            "Running VMs whose agent is older than HEARTH_AGENT_MIN_VERSION",
            registry=self.registry,
        )
        self.heartbeats = Counter(
            "hearth_vm_heartbeats_total",
            "Agent heartbeats by result (ok, missed)",
            ["result"],
            registry=self.registry,
        )

        self._zero_known_series()

    def _zero_known_series(self) -> None:
        """Export at 0 the counters' series alert rules read: Prometheus' ``increase`` cannot
        see a series' first value, so a first failure would be missed if it created the series."""
        for stage in FAILURE_STAGES:
            self.failures.labels(stage=stage)
        for outcome in ("delivered", "retry", "failed"):
            self.webhook_deliveries.labels(outcome=outcome)
        for result in ("ok", "missed"):
            self.heartbeats.labels(result=result)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

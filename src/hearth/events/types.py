"""The names of Hearth's events and the states of a webhook delivery."""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """What happened. A webhook subscribes to some of these; an unknown name is refused."""

    VM_READY = "vm.ready"
    VM_UNHEALTHY = "vm.unhealthy"
    VM_RECOVERED = "vm.recovered"
    VM_FAILED = "vm.failed"
    VM_TIMED_OUT = "vm.timed_out"  # its timeoutS or idleTimeoutS ran out; its action taken
    VM_AUTO_RESUMED = "vm.auto_resumed"  # a call that needed it running resumed it
    AUTH_COMPLETED = "auth.completed"
    AUTH_FAILED = "auth.failed"
    CREDENTIAL_DELIVERED = "credential.delivered"
    CREDENTIAL_EXPIRING = "credential.expiring"
    CREDENTIAL_EXPIRED = "credential.expired"
    AGENT_UPDATED = "agent.updated"
    AGENT_UPDATE_FAILED = "agent.update_failed"


class DeliveryStatus(StrEnum):
    """Where one event's delivery to one webhook stands."""

    PENDING = "pending"  # not yet accepted; retried until its deadline
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # the deadline passed (or the webhook is gone) without a 2xx

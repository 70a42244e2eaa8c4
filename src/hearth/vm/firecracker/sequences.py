"""The API call sequences of a microVM's lifecycle, as functions of a client and a plan.

The backend runs these against a real Firecracker; the contract tests run the same functions
against ``httpx.MockTransport`` and validate every request against the published spec.

    cold boot:  [logger] [metrics] machine-config boot-source drives/rootfs network-interfaces/eth0
                mmds/config mmds entropy → actions InstanceStart
    template:   vm Paused → snapshot/create Full → GET version, vm/config (recorded)
    restore:    [logger] [metrics] snapshot/load (taps overridden, paused) → mmds → vm Resumed
    pause/resume: vm Paused / vm Resumed
    halt:       [actions FlushMetrics] → vm Paused (best effort, before the process is signalled)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hearth.errors import BackendError
from hearth.vm.firecracker import payloads
from hearth.vm.firecracker.client import FirecrackerClient
from hearth.vm.firecracker.payloads import SecretBody, VmRunState

# Loading the kernel is synchronous in InstanceStart; writing memory out scales with its size.
START_TIMEOUT_S = 15.0
SNAPSHOT_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 30.0
HALT_TIMEOUT_S = 1.0


@dataclass(frozen=True, kw_only=True)
class BootPlan:
    """Everything a cold boot configures; paths as Firecracker sees them (relative to its root)."""

    vcpus: int
    mem_mib: int
    kernel: str
    boot_args: str
    root_drive: str
    tap: str
    guest_mac: str
    mmds: SecretBody
    initrd: str | None = None
    log_path: str | None = None
    metrics_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class SnapshotFiles:
    """The two files of a full snapshot, as Firecracker sees them."""

    vmstate: str
    memory: str


@dataclass(frozen=True, kw_only=True)
class RestorePlan:
    """What a clone needs: the template's files, its own tap, its own MMDS document."""

    files: SnapshotFiles
    tap: str
    mmds: SecretBody
    clock_realtime: bool = False
    log_path: str | None = None
    metrics_path: str | None = None


async def configure_observability(
    client: FirecrackerClient, *, log_path: str | None, metrics_path: str | None
) -> None:
    """Logger and metrics: the only resources allowed before ``snapshot/load`` too."""
    if log_path is not None:
        await client.logger.put(payloads.logger(log_path=log_path))
    if metrics_path is not None:
        await client.metrics.put(payloads.metrics(metrics_path=metrics_path))


async def configure_and_boot(client: FirecrackerClient, plan: BootPlan) -> None:
    """Configure a fresh Firecracker from ``plan`` and start the guest."""
    await configure_observability(client, log_path=plan.log_path, metrics_path=plan.metrics_path)
    await client.machine_config.put(payloads.machine_config(vcpus=plan.vcpus, mem_mib=plan.mem_mib))
    await client.boot_source.put(
        payloads.boot_source(
            kernel_image_path=plan.kernel, boot_args=plan.boot_args, initrd_path=plan.initrd
        )
    )
    await client.drives.put(payloads.root_drive(plan.root_drive))
    await client.network_interfaces.put(
        payloads.network_interface(host_dev_name=plan.tap, guest_mac=plan.guest_mac)
    )
    # MMDS may only name interfaces that already exist.
    await client.mmds_config.put(payloads.mmds_config())
    await client.mmds.put(plan.mmds)
    await client.entropy.put(payloads.entropy())
    await client.actions.put(payloads.instance_start(), timeout_s=START_TIMEOUT_S)


async def pause(client: FirecrackerClient) -> None:
    """Stop the vCPUs."""
    await client.vm.patch(payloads.vm_state(VmRunState.PAUSED))


async def resume(client: FirecrackerClient) -> None:
    """Run the vCPUs again."""
    await client.vm.patch(payloads.vm_state(VmRunState.RESUMED))


async def snapshot(client: FirecrackerClient, files: SnapshotFiles) -> dict[str, Any]:
    """Pause, write a full snapshot, and return what produced it (version and VM config)."""
    await pause(client)
    await client.snapshot_create.put(
        payloads.snapshot_create(snapshot_path=files.vmstate, mem_file_path=files.memory),
        timeout_s=SNAPSHOT_TIMEOUT_S,
    )
    version = await client.version.get()
    config = await client.vm_config.get()
    return {"firecracker_version": version.get("firecracker_version"), "vm_config": config}


async def restore(client: FirecrackerClient, plan: RestorePlan) -> None:
    """Load a template into a fresh Firecracker, give it its own MMDS document, and resume it."""
    await configure_observability(client, log_path=plan.log_path, metrics_path=plan.metrics_path)
    await client.snapshot_load.put(
        payloads.snapshot_load(
            snapshot_path=plan.files.vmstate,
            mem_file_path=plan.files.memory,
            network_overrides=[payloads.network_override(host_dev_name=plan.tap)],
            resume_vm=False,
            clock_realtime=plan.clock_realtime,
        ),
        timeout_s=LOAD_TIMEOUT_S,
    )
    # The MMDS data store is not part of a snapshot; the clone's own document goes in before
    # its vCPUs run.
    await client.mmds.put(plan.mmds)
    await resume(client)


async def halt(client: FirecrackerClient, *, flush_metrics: bool) -> list[str]:
    """Best effort before signalling the process: flush metrics, freeze the vCPUs.

    Returns the failures instead of raising: a VM that never started or already died cannot
    answer, and teardown must go on regardless.
    """
    failures: list[str] = []
    if flush_metrics:
        try:
            await client.actions.put(payloads.flush_metrics(), timeout_s=HALT_TIMEOUT_S)
        except BackendError as exc:
            failures.append(exc.message)
    try:
        await client.vm.patch(payloads.vm_state(VmRunState.PAUSED), timeout_s=HALT_TIMEOUT_S)
    except BackendError as exc:
        failures.append(exc.message)
    return failures


async def instance_state(client: FirecrackerClient) -> str:
    """``GET /``: "Not started", "Running" or "Paused"."""
    info = await client.instance.get()
    return str(info.get("state", ""))

"""The composition root: Hearth's two halves built from ``Settings``, and torn down LIFO.

    async with open_hearth(settings) as hearth:
        hearth.control   # ControlPlane: store, vault, credentials, VM records, auth flow, metrics
        hearth.node      # Node: the VM backend and images (in process today: LocalNode)

Entered by ``hearth serve`` (the HTTP app's lifespan), the CLI's local commands, the benchmarks
and the tests. Every part gets its dependencies in its constructor; nothing is patched in later.
A controller holds its state dir (``StateDirLock``) for its whole life, before it builds anything.
Each part that needs stopping registers its own teardown right after it is built, so a start
that fails half-way stops exactly what it started; teardown runs every step, newest first,
whatever an earlier one raised, and the store closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from hearth import __version__
from hearth.agent_bundle import AgentBundle, this_controllers_bundle
from hearth.auth.delivery import Delivery
from hearth.auth.flow import AuthFlow
from hearth.auth.retention import EndedLogins
from hearth.config import Settings
from hearth.control.agent_tokens import AgentTokens
from hearth.control.agent_updates import AgentUpdates
from hearth.control.bootstrap import ensure_admin_key, open_store
from hearth.control.disk_use import DiskUse
from hearth.control.execs import ExecService
from hearth.control.files import FileService
from hearth.control.heartbeat import Heartbeat
from hearth.control.lifetimes import Lifetimes
from hearth.control.network import CliNetworks, provider_hosts
from hearth.control.pool import settle_adopted
from hearth.control.quotas import Quotas
from hearth.control.reconcile import reconcile
from hearth.control.runs import RunService
from hearth.control.templates import TemplateWarmer
from hearth.control.terminals import TerminalService
from hearth.control.vm_keys import VmKeys
from hearth.control.vms import VmService
from hearth.control.workspaces import Workspaces
from hearth.credentials.expiry import ExpiryWatch
from hearth.credentials.pullback import PullBack
from hearth.credentials.service import CredentialService
from hearth.credentials.vault import CredentialVault
from hearth.events.dispatch import WebhookDispatcher
from hearth.events.log import EventLog
from hearth.events.webhooks import WebhookService
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.node.images import ImageCatalog
from hearth.node.interface import Node
from hearth.node.local import ImageSource, LocalNode
from hearth.state_dir_lock import CONTROLLER, StateDirLock
from hearth.store import Store
from hearth.store.controller_lease import CHECK_INTERVAL_S, ControllerLease
from hearth.teardown import Teardown
from hearth.vm.backend import VmBackend
from hearth.vm.select import open_backend
from hearth.vm.types import VmType

_log = get_logger("runtime")


@dataclass(frozen=True)
class ControlPlane:
    """The half that decides: API state, logins, credentials, VM records; holds a Node."""

    settings: Settings
    store: Store
    metrics: ControllerMetrics
    credentials: CredentialService
    vms: VmService
    execs: ExecService
    lifetimes: Lifetimes
    files: FileService
    runs: RunService
    terminals: TerminalService
    networks: CliNetworks
    auth: AuthFlow
    delivery: Delivery
    events: EventLog
    webhooks: WebhookService
    heartbeat: Heartbeat
    agent_updates: AgentUpdates
    expiry: ExpiryWatch
    templates: TemplateWarmer
    node: Node


@dataclass(frozen=True)
class Hearth:
    """Both halves, running."""

    control: ControlPlane
    node: Node


def open_node(
    settings: Settings,
    *,
    backend: VmBackend | None = None,
    images: ImageSource | None = None,
    metrics: ControllerMetrics | None = None,
) -> LocalNode:
    """This host's node: the configured VMM (``HEARTH_VMM``; ConfigError naming why it cannot
    run here), the image catalog and egress paths; tests and benchmarks may pass their own
    parts."""
    return LocalNode(
        backend or open_backend(settings),
        images or ImageCatalog(settings),
        egress_pins=dict(settings.egress_pins),
        metrics=metrics,
        volumes_dir=settings.state_dir / "volumes",
    )


@asynccontextmanager
async def open_hearth(
    settings: Settings,
    *,
    backend: VmBackend | None = None,
    images: ImageSource | None = None,
    node: Node | None = None,
    quotas: Quotas | None = None,
    destroy_on_exit: bool = False,
    monitor_interval_s: float = 1.0,
    agent_bundle: AgentBundle | None = None,
    on_lease_lost: Callable[[], None] | None = None,
    lease_check_interval_s: float = CHECK_INTERVAL_S,
) -> AsyncIterator[Hearth]:
    """Build, recover and start everything; on exit stop it all (VMs keep running unless
    ``destroy_on_exit``). Tests and benchmarks may pass their own backend and images, or a
    whole node; tests their own agent build (``agent_bundle``, default: this controller's).
    When another controller took the database meanwhile (a PostgreSQL lease lost with its
    connection, see ``ControllerLease``), ``on_lease_lost`` is called: by default this process
    is sent SIGTERM, so that it stops as it would on one, teardown and all."""
    async with Teardown() as teardown:
        lock = StateDirLock.take(settings.state_dir, holder=CONTROLLER)
        teardown.push("let the state dir go", lock.close)
        metrics = ControllerMetrics()
        node = node or open_node(settings, backend=backend, images=images, metrics=metrics)
        store = await open_store(settings)
        teardown.push("close the store", store.close)
        lease = await ControllerLease.take(store.engine)
        teardown.push("let the database go", lease.close)
        lease.watch(on_lease_lost or stop_this_process, interval_s=lease_check_interval_s)
        await ensure_admin_key(store, settings)
        # Before anything touches a VM: without its master key, none of their tokens would open.
        vault = CredentialVault.load(
            settings.state_dir,
            master_key=settings.master_key,
            sealed=await store.sealed.count_by_key(),
        )
        credentials = CredentialService(store, vault)
        events = EventLog(store=store, settings=settings, metrics=metrics)
        webhooks = WebhookService(store=store, vault=vault, settings=settings)
        networks = CliNetworks(node=node, store=store, hosts=provider_hosts(settings))
        pullback = PullBack(store, credentials, events)
        teardown.push("stop the CLI VMs' egress proxies", networks.close_all)
        vms = VmService(
            settings=settings,
            store=store,
            node=node,
            metrics=metrics,
            quotas=quotas or Quotas.from_settings(settings),
            tokens=AgentTokens(vault),
            keys=VmKeys(vault),
            pool_sizes={VmType.CLI: settings.pool_cli, VmType.BROWSER: settings.pool_browser},
            before_destroy=[pullback.before_destroy],
            networks=networks if settings.cli_egress == "proxy" else None,
            events=events,
            workspaces=Workspaces(settings=settings, store=store, node=node, vault=vault),
        )
        teardown.push(
            "stop the VM service", functools.partial(vms.shutdown, destroy_vms=destroy_on_exit)
        )
        delivery = Delivery(
            vms=vms,
            credentials=credentials,
            networks=networks,
            events=events,
            oidc_refresh_margin_s=settings.oidc_refresh_margin_s,
        )
        lifetimes = Lifetimes(vms=vms, settings=settings)
        auth = AuthFlow(
            settings=settings,
            store=store,
            vms=vms,
            node=node,
            credentials=credentials,
            networks=networks,
            events=events,
            delivery=delivery,
            metrics=metrics,
            lifetimes=lifetimes,
        )
        teardown.push("stop the login flows", auth.shutdown)
        execs = ExecService(settings=settings, vms=vms, networks=networks, lifetimes=lifetimes)
        runs = RunService(settings=settings, store=store, vms=vms, execs=execs)
        teardown.push("stop reading the runs", runs.shutdown)
        terminals = TerminalService(
            execs=execs,
            link_ttl_s=settings.terminal_link_ttl_s,
            shell_timeout_s=settings.terminal_timeout_s,
        )
        teardown.push("end the open terminals", terminals.close)
        dispatcher = WebhookDispatcher(
            store=store, webhooks=webhooks, events=events, settings=settings, metrics=metrics
        )
        dispatcher.start()
        teardown.push("stop delivering webhooks", dispatcher.stop)
        await reconcile(vms)
        await auth.recover()
        await runs.recover()
        templates = TemplateWarmer(vms=vms, enabled=settings.prepare_templates)
        if settings.prepare_templates:
            templates.start()
        teardown.push("stop preparing templates", templates.stop)
        if vms.pool is not None:
            await vms.pool.start()
            teardown.push("stop the warm pool", vms.pool.stop)
        else:  # no pool to take in the pooled VMs a crash left: each is destroyed
            await settle_adopted(vms, {})
        monitor = asyncio.create_task(vms.monitor(monitor_interval_s))
        teardown.push("stop the VM monitor", functools.partial(_cancel, monitor))
        heartbeat = Heartbeat(vms=vms, settings=settings, metrics=metrics)
        beating = asyncio.create_task(heartbeat.run())
        teardown.push("stop the heartbeats", functools.partial(_cancel, beating))
        agent_updates = AgentUpdates(
            vms=vms,
            heartbeat=heartbeat,
            settings=settings,
            bundle=agent_bundle or this_controllers_bundle(),
            on_images_changed=templates.start if settings.prepare_templates else None,
            execs=execs,
        )
        teardown.push("stop the agent rollout", agent_updates.shutdown)
        expiry = ExpiryWatch(store=store, events=events, metrics=metrics, settings=settings)
        for name, loop in [
            ("stop watching credential expiry", expiry.run()),
            ("stop pulling credentials back", pullback.run(vms, settings.pullback_interval_s)),
            ("stop ending VMs whose time is up", lifetimes.run()),
            ("stop pruning the event log", events.prune()),
            ("stop forgetting ended logins", EndedLogins(store=store, settings=settings).run()),
            ("stop measuring the VMs' disks", DiskUse(store=store, node=node).run()),
        ]:
            teardown.push(name, functools.partial(_cancel, asyncio.create_task(loop)))
        control = ControlPlane(
            settings=settings,
            store=store,
            metrics=metrics,
            credentials=credentials,
            vms=vms,
            execs=execs,
            lifetimes=lifetimes,
            files=FileService(settings=settings, vms=vms, execs=execs),
            runs=runs,
            terminals=terminals,
            networks=networks,
            auth=auth,
            delivery=delivery,
            events=events,
            webhooks=webhooks,
            heartbeat=heartbeat,
            agent_updates=agent_updates,
            expiry=expiry,
            templates=templates,
            node=node,
        )
        _log.info(
            "controller_started", version=__version__, vmm=node.vmm, store=store.url_for_log()
        )
        if settings.browser_devtools:
            _log.warning(
                "browser_devtools_forwarded",
                message="HEARTH_BROWSER_DEVTOOLS=1: every Browser VM's DevTools is forwarded to a "
                "loopback port, where any local process can drive the login browser (benchmarks "
                "and tests only)",
            )
        yield Hearth(control=control, node=node)
    _log.info("controller_stopped")


def stop_this_process() -> None:
    """Ask this process to stop as a SIGTERM does (``hearth serve`` then stops its server and
    runs the whole teardown)."""
    os.kill(os.getpid(), signal.SIGTERM)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

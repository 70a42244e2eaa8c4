"""``hearth vm run``: one VM straight from the configured VMM backend, without a controller."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hearth.cli.common import console, err_console, fail, load_settings, plain
from hearth.config import Settings
from hearth.errors import HearthError, NotAnImage
from hearth.images.build import default_output_dir
from hearth.images.manifest import ImageDir
from hearth.images.recipes import get_recipe
from hearth.vm.select import open_backend
from hearth.vm.types import BootMode, NetworkMode, VmSpec


def vm_run(
    recipe: Annotated[str, typer.Option(help="Image recipe (under the state dir).")] = "minimal",
    image: Annotated[
        Path | None, typer.Option(help="Image directory (overrides --recipe).")
    ] = None,
    vcpus: Annotated[int, typer.Option(min=1, max=16)] = 1,
    mem_mib: Annotated[int, typer.Option(min=128, max=65536)] = 512,
    cold: Annotated[bool, typer.Option(help="Cold boot; skip the snapshot template.")] = False,
    once: Annotated[bool, typer.Option(help="Destroy as soon as it is healthy.")] = False,
) -> None:
    """Start one VM with the configured VMM (HEARTH_VMM), prove its agent healthy, keep it until
    Ctrl-C."""
    settings = load_settings()
    try:
        asyncio.run(
            _vm_run(
                settings,
                recipe,
                image,
                VmSpec(vcpus=vcpus, mem_mib=mem_mib, network=NetworkMode(settings.network_mode)),
                cold,
                once,
            )
        )
    except HearthError as exc:
        fail(exc)


async def _vm_run(
    settings: Settings, recipe: str, image: Path | None, spec: VmSpec, cold: bool, once: bool
) -> None:
    backend = open_backend(settings)  # a VMM that cannot run here is named first
    image_dir = ImageDir(image or default_output_dir(settings, get_recipe(recipe)))
    if image_dir.manifest is None:
        raise NotAnImage(f"{image_dir.path} holds no built image; run hearth image build first")
    with err_console.status(
        escape(f"starting a VM from {image_dir.path} ({backend.accel.name}) …")
    ):
        vm = await backend.create(image_dir, spec, boot_mode=BootMode.COLD if cold else None)
    assert vm.workdir is not None
    assert vm.token is not None
    table = Table(title=plain(f"VM {vm.id}"), show_header=False)
    rows = {
        "state": vm.state.value,
        "boot": f"{vm.boot_mode.value} via {backend.accel.name} ({backend.accel.reason})",
        "time to healthy": f"{vm.time_to_healthy_s or 0:.2f} s",
        "agent": f"{vm.agent_url}",
        "disk added": f"{(vm.disk_bytes or 0) / 1024:.0f} KiB (copy-on-write layer)",
        # Shown here once: this command keeps the VM's token nowhere (it lives as the VM does).
        "try": f'curl -H "Authorization: Bearer {vm.token}" {vm.agent_url}/version',
    }
    for name, value in rows.items():
        table.add_row(name, plain(value))
    console.print(table)
    try:
        if not once:
            console.print("[dim]Ctrl-C destroys the VM.[/dim]")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            exited = asyncio.create_task(backend.wait_exit(vm))
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({exited, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            exited.cancel()
            if vm.error:
                err_console.print(f"[red]{escape(vm.error)}[/red]")
    finally:
        await backend.destroy(vm)
        console.print(plain(f"destroyed {vm.id}"))

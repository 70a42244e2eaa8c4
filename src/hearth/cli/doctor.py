"""``hearth doctor``: can this host run Hearth?"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer
from rich.table import Table

from hearth.cli.common import console, load_settings, plain
from hearth.cli.server import why_unopened
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.images.build import default_output_dir
from hearth.images.initramfs import static_busybox
from hearth.images.manifest import ImageDir
from hearth.images.recipes import RECIPES
from hearth.sdk._errors import shown_url
from hearth.store import Store
from hearth.tools import require_tool
from hearth.vm.accel import detect_accel
from hearth.vm.select import Vmm, check_vmm


def doctor() -> None:
    """Check the host: accelerator, tools, state dir, database, built images."""
    settings = load_settings()
    checks: list[tuple[str, bool, str]] = []
    accel = detect_accel(override=settings.qemu_accel)
    checks.append(("accelerator", True, f"{accel.name}: {accel.reason}"))
    for vmm in Vmm:
        check = check_vmm(settings, vmm)
        selected = vmm.value == settings.vmm
        detail = check.reason if check.ok else f"cannot run here: {check.reason}"
        # Only the VMM HEARTH_VMM selects must run; the other is shown for information.
        name = f"vmm {vmm.value} ({'selected' if selected else 'not selected'} by HEARTH_VMM)"
        checks.append((name, check.ok or not selected, detail))
    for tool in ("qemu-system-x86_64", "qemu-img", "debootstrap", "debugfs", "mkfs.ext4", "cpio"):
        try:
            checks.append((tool, True, require_tool(tool)))
        except HearthError as exc:
            checks.append((tool, False, exc.message))
    try:
        checks.append(("busybox (static)", True, str(static_busybox())))
    except HearthError as exc:
        checks.append(("busybox (static)", False, exc.message))
    state_ok = _writable_dir(settings.state_dir)
    checks.append(
        (
            "state dir",
            state_ok,
            f"{settings.state_dir} {'writable' if state_ok else 'not writable'}",
        )
    )
    checks.append(("database", *asyncio.run(_database(settings))))
    network_tools = ("ip", "nft")
    for tool in network_tools:
        try:
            checks.append((tool, True, require_tool(tool)))
        except HearthError as exc:
            # Only the netns network mode needs them.
            checks.append((tool, settings.network_mode != "netns", exc.message))
    for name, recipe in sorted(RECIPES.items()):
        manifest = ImageDir(default_output_dir(settings, recipe)).manifest
        detail = (
            f"agent {manifest.agent_version}, {manifest.content_hash}" if manifest else "not built"
        )
        checks.append((f"image {name}", True, detail))
    table = Table(title="hearth doctor")
    table.add_column("check")
    table.add_column("ok")
    table.add_column("detail")
    for name, ok, detail in checks:
        table.add_row(plain(name), "[green]yes[/green]" if ok else "[red]no[/red]", plain(detail))
    console.print(table)
    if not all(ok for _, ok, _ in checks):
        raise typer.Exit(1)


async def _database(settings: Settings) -> tuple[bool, str]:
    """Open the store (running migrations) and ping it; the detail never holds a password."""
    url = settings.database()
    try:
        store = await Store.open(url)
    except HearthError as exc:  # it names the database (its password masked) and why
        return False, exc.message
    except Exception as exc:  # what serve would refuse it for, in the same words
        return False, f"cannot open the database {shown_url(url)}: {why_unopened(exc, url)}"
    try:
        ok = await store.ping()
    finally:
        await store.close()
    return ok, f"{store.url_for_log()} {'reachable' if ok else 'not answering'}"


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)

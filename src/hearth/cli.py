"""The ``hearth`` command line: images, VMs and host checks."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from hearth.config import Settings
from hearth.errors import HearthError, ImageVerifyFailed, NotAnImage
from hearth.images.agent_install import install_agent, list_backups, rollback_image, verify_image
from hearth.images.build import build_image, default_output_dir
from hearth.images.initramfs import static_busybox
from hearth.images.manifest import ImageDir
from hearth.images.recipes import RECIPES, get_recipe
from hearth.logging import configure_logging
from hearth.progress import default_progress
from hearth.tools import require_tool
from hearth.vm.qemu.accel import detect_accel
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.types import BootMode, VmSpec

app = typer.Typer(help="Hearth: isolated microVMs for AI coding CLIs.", no_args_is_help=True)
image_app = typer.Typer(help="Build, repair and check golden images.", no_args_is_help=True)
vm_app = typer.Typer(help="Run VMs.", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(vm_app, name="vm")

console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
    except HearthError as exc:
        _fail(exc)
    configure_logging(json=settings.log_json)
    return settings


def _fail(exc: HearthError, *, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
    raise typer.Exit(code)


@image_app.command("build")
def image_build(
    recipe: Annotated[str, typer.Option(help=f"One of: {', '.join(sorted(RECIPES))}.")] = "minimal",
    out: Annotated[Path | None, typer.Option(help="Output directory.")] = None,
) -> None:
    """Build a golden image (rootfs, kernel, initramfs, vmlinux, manifest); cached by content."""
    settings = _settings()
    try:
        chosen = get_recipe(recipe)
        out_dir = (out or default_output_dir(settings, chosen)).absolute()
        manifest, cached = build_image(
            chosen, settings=settings, out_dir=out_dir, progress=default_progress("image")
        )
    except HearthError as exc:
        _fail(exc)
    table = Table(title=f"image {manifest.recipe} → {out_dir}", show_header=False)
    table.add_row("content hash", manifest.content_hash)
    table.add_row("agent", manifest.agent_version)
    table.add_row("kernel", f"{manifest.kernel_package} {manifest.kernel_version}")
    table.add_row("cache", "reused" if cached else "built")
    for name, size in sorted(manifest.sizes.items()):
        table.add_row(name, f"{size / 2**20:.1f} MiB")
    console.print(table)


@image_app.command("install-agent")
def image_install_agent(image: Path) -> None:
    """Install or upgrade the agent inside an ext4 image without mounting it (keeps a backup)."""
    _settings()
    try:
        result = install_agent(image.absolute())
    except HearthError as exc:
        _fail(exc)
    if result.changed:
        console.print(
            f"installed agent {result.agent_version} into {image} (backup: {result.backup})"
        )
    else:
        console.print(f"agent {result.agent_version} already installed in {image}; nothing to do")


@image_app.command("verify")
def image_verify(image: Path) -> None:
    """Check the agent files, unit, enabled symlink and version; exit 1 naming what is missing."""
    _settings()
    try:
        report = verify_image(image.absolute())
    except HearthError as exc:
        _fail(exc, code=2)
    if report.ok:
        console.print(f"[green]ok[/green] {image}: agent {report.agent_version}")
        return
    for problem in report.problems:
        err_console.print(f"[red]missing[/red] {problem}")
    _fail(ImageVerifyFailed(f"{image} failed verification", missing=report.problems))


@image_app.command("rollback")
def image_rollback(image: Path) -> None:
    """Restore the image's latest backup (made by install-agent)."""
    _settings()
    try:
        used = rollback_image(image.absolute())
    except HearthError as exc:
        _fail(exc)
    console.print(f"restored {image} from {used} ({len(list_backups(image))} backups kept)")


@vm_app.command("run")
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
    """Start one VM with the QEMU backend, prove its agent healthy, keep it until Ctrl-C."""
    settings = _settings()
    try:
        asyncio.run(
            _vm_run(settings, recipe, image, VmSpec(vcpus=vcpus, mem_mib=mem_mib), cold, once)
        )
    except HearthError as exc:
        _fail(exc)


async def _vm_run(
    settings: Settings, recipe: str, image: Path | None, spec: VmSpec, cold: bool, once: bool
) -> None:
    image_dir = ImageDir(image or default_output_dir(settings, get_recipe(recipe)))
    if image_dir.manifest is None:
        raise NotAnImage(f"{image_dir.path} holds no built image; run hearth image build first")
    backend = QemuBackend(state_dir=settings.state_dir)
    with err_console.status(f"starting a VM from {image_dir.path} ({backend.accel.name}) …"):
        vm = await backend.create(image_dir, spec, boot_mode=BootMode.COLD if cold else None)
    assert vm.workdir is not None
    assert vm.token is not None
    token_file = vm.workdir / "agent.token"
    token_file.touch(mode=0o600)
    token_file.write_text(vm.token)
    table = Table(title=f"VM {vm.id}", show_header=False)
    table.add_row("state", vm.state.value)
    table.add_row("boot", f"{vm.boot_mode.value} via {backend.accel.name} ({backend.accel.reason})")
    table.add_row("time to healthy", f"{vm.time_to_healthy_s or 0:.2f} s")
    table.add_row("agent", f"{vm.agent_url}")
    table.add_row("disk added", f"{(vm.disk_bytes or 0) / 1024:.0f} KiB (qcow2 overlay)")
    table.add_row(
        "try", f'curl -H "Authorization: Bearer $(cat {token_file})" {vm.agent_url}/version'
    )
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
                err_console.print(f"[red]{vm.error}[/red]")
    finally:
        await backend.destroy(vm)
        console.print(f"destroyed {vm.id}")


@app.command("doctor")
def doctor() -> None:
    """Check the host: accelerator, QEMU and image tools, state dir, built images."""
    settings = _settings()
    checks: list[tuple[str, bool, str]] = []
    accel = detect_accel(override=os.environ.get("HEARTH_QEMU_ACCEL", "auto"))
    checks.append(("accelerator", True, f"{accel.name}: {accel.reason}"))
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
        table.add_row(name, "[green]yes[/green]" if ok else "[red]no[/red]", detail)
    console.print(table)
    if not all(ok for _, ok, _ in checks):
        raise typer.Exit(1)


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def main() -> None:
    """Entry point for ``python -m hearth``."""
    app(prog_name="hearth")


if __name__ == "__main__":
    main()

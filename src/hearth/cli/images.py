"""``hearth image …``: build, install-agent, trust-ca, verify, rollback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from hearth.cli.common import console, err_console, fail, load_settings, plain
from hearth.errors import HearthError, ImageVerifyFailed, InvalidInput
from hearth.images.agent_install import install_agent, list_backups, rollback_image, verify_image
from hearth.images.build import build_image, default_output_dir
from hearth.images.recipes import RECIPES, get_recipe
from hearth.images.trust import trust_ca
from hearth.node.images import prepare_templates
from hearth.progress import default_progress

image_app = typer.Typer(help="Build, repair and check golden images.", no_args_is_help=True)
T = TypeVar("T")


def _on_image(action: Callable[[Path], T], image: Path, *, exit_code: int = 1) -> T:
    """``action`` on the absolute image path; a HearthError exits with ``exit_code``."""
    load_settings()
    try:
        return action(image.absolute())
    except HearthError as exc:
        fail(exc, code=exit_code)


@image_app.command("build")
def image_build(
    recipe: Annotated[str, typer.Option(help=f"One of: {', '.join(sorted(RECIPES))}.")] = "minimal",
    out: Annotated[Path | None, typer.Option(help="Output directory.")] = None,
    templates: Annotated[
        bool,
        typer.Option(
            help="Then prepare the restore templates of the VM types that boot this image, at "
            "their default sizes (the controller would build them at its start otherwise)."
        ),
    ] = True,
) -> None:
    """Build a golden image (rootfs, kernel, initramfs, vmlinux, manifest); cached by content.
    Then prepare the restore templates of the VM types that boot it."""
    settings = load_settings()
    try:
        chosen = get_recipe(recipe)
        out_dir = (out or default_output_dir(settings, chosen)).absolute()
        manifest, cached = build_image(
            chosen, settings=settings, out_dir=out_dir, progress=default_progress("image")
        )
    except HearthError as exc:
        fail(exc)
    table = Table(title=plain(f"image {manifest.recipe} → {out_dir}"), show_header=False)
    table.add_row("content hash", plain(manifest.content_hash))
    table.add_row("agent", plain(manifest.agent_version))
    table.add_row("kernel", plain(f"{manifest.kernel_package} {manifest.kernel_version}"))
    table.add_row("cache", "reused" if cached else "built")
    for name, size in sorted(manifest.sizes.items()):
        table.add_row(plain(name), f"{size / 2**20:.1f} MiB")
    if templates:
        with err_console.status("preparing the restore templates of the VMs that boot it …"):
            prepared = asyncio.run(prepare_templates(settings, out_dir))
        for name, outcome in prepared:
            table.add_row(plain(f"template {name}"), plain(outcome))
    console.print(table)


@image_app.command("install-agent")
def image_install_agent(image: Path) -> None:
    """Install or upgrade the agent inside an ext4 image without mounting it (keeps a backup)."""
    result = _on_image(install_agent, image)
    if result.changed:
        console.print(
            plain(f"installed agent {result.agent_version} into {image} (backup: {result.backup})")
        )
    else:
        console.print(
            plain(f"agent {result.agent_version} already installed in {image}; nothing to do")
        )


@image_app.command("trust-ca")
def image_trust_ca(
    image: Path,
    ca: Annotated[Path, typer.Argument(help="the CA certificate (PEM)")],
    name: Annotated[str, typer.Option(help="its file name in the image")] = "extra",
) -> None:
    """Make the image (and the CLIs in its VMs) trust one more CA, e.g. a TLS-inspecting
    proxy's (keeps a backup)."""
    try:
        pem = ca.read_bytes()
    except OSError as exc:
        fail(InvalidInput(f"cannot read {ca}: {exc.strerror}"))
    result = _on_image(lambda path: trust_ca(path, pem, name=name), image)
    what = "added to" if result.changed else "already trusted by"
    console.print(plain(f"CA sha256:{result.fingerprint} {what} {image} (backup: {result.backup})"))


@image_app.command("verify")
def image_verify(image: Path) -> None:
    """Check the agent files, unit, enabled symlink and version; exit 1 naming what is missing."""
    report = _on_image(verify_image, image, exit_code=2)
    if report.ok:
        console.print(f"[green]ok[/green] {escape(f'{image}: agent {report.agent_version}')}")
        return
    for problem in report.problems:
        err_console.print(f"[red]missing[/red] {escape(problem)}")
    fail(ImageVerifyFailed(f"{image} failed verification", missing=report.problems))


@image_app.command("rollback")
def image_rollback(image: Path) -> None:
    """Restore the image's latest backup (install-agent, trust-ca and agent rollouts each keep
    one in IMAGE.backups/; the newest 2 are kept)."""
    used = _on_image(rollback_image, image)
    console.print(plain(f"restored {image} from {used} ({len(list_backups(image))} backups kept)"))

"""``hearth bench auth`` and ``restarts`` refuse, before starting anything, an image that is not
built, naming the VM role and the command that builds it; what the bench prints is text, never
Rich markup."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from hearth.bench.cli import bench_app
from hearth.config import Settings
from hearth.images.build import default_output_dir
from hearth.images.recipes import get_recipe
from hearth.progress import RichProgress
from tests.conftest import write_manifest


def _bench(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Exit code and output (without whitespace: the console wraps long paths anywhere)."""
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    result = CliRunner().invoke(
        app,
        ["bench", *args],
        env={"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_CACHE_DIR": str(tmp_path)},
    )
    return result.exit_code, "".join(result.output.split())


@pytest.mark.parametrize("bench", ["auth", "restarts"])
def test_a_login_bench_refuses_a_cli_image_that_is_not_built(tmp_path: Path, bench: str) -> None:
    empty = tmp_path / "not-an-image"
    empty.mkdir()

    code, output = _bench(tmp_path, bench, "--cli-image", str(empty))

    assert code == 1
    assert "not_an_image" in output
    assert f"{empty}holdsnobuiltimageforCLIVMs" in output
    assert "hearthimagebuild--recipeminimal" in output
    assert not (tmp_path / "state").exists(), "the bench started before refusing"


@pytest.mark.parametrize("bench", ["auth", "restarts"])
def test_a_login_bench_defaults_to_the_browser_image_under_the_state_dir(
    tmp_path: Path, bench: str
) -> None:
    settings = Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path / "state")})
    default = default_output_dir(settings, get_recipe("browser"))
    cli_image = tmp_path / "cli"
    cli_image.mkdir()
    write_manifest(cli_image)

    code, output = _bench(tmp_path, bench, "--cli-image", str(cli_image))

    assert code == 1
    assert f"{default}holdsnobuiltimageforBrowserVMs" in output
    assert "hearthimagebuild--recipebrowser" in output


def test_a_path_that_looks_like_markup_is_printed_as_it_is(tmp_path: Path) -> None:
    # Rich would read "[b]" as a style and drop it from the error, naming another path.
    empty = tmp_path / "[b]img"
    empty.mkdir()

    code, output = _bench(tmp_path, "auth", "--cli-image", str(empty))

    assert code == 1
    assert f"{empty}holdsnobuiltimageforCLIVMs" in output


def test_a_phase_label_and_a_note_are_shown_as_they_are() -> None:
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    progress = RichProgress(console)

    with progress.phase("copy", "/srv/[b]img/rootfs.ext4"):
        pass
    progress.note("wrote [red]x[/red] :smile:")

    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "copy /srv/[b]img/rootfs.ext4 (" in shown
    assert "wrote [red]x[/red]" in shown


def test_a_bench_that_refuses_in_its_run_exits_1_and_keeps_the_state_dir_given(
    tmp_path: Path,
) -> None:
    # The command line builds the bench's options for its state dir and runs it there; this
    # bench stops at its own check (a manifest listing no files is not a built image).
    image = tmp_path / "image"
    image.mkdir()
    write_manifest(image)
    state_dir = tmp_path / "bench-state"

    code, output = _bench(
        tmp_path, "run", "--no-runs", "--image", str(image), "--state-dir", str(state_dir)
    )

    assert code == 1
    assert output == f"error(bench_failed):{image}holdsnobuiltimage"
    assert state_dir.is_dir(), "a state dir the user gave is kept"

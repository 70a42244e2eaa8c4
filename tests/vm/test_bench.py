"""Smoke tests of ``hearth bench``: each benchmark runs once at its smallest size and reports.

No timing is asserted: these only keep the benchmarks working, check the JSON document's shape
(every number in it positive), and prove that nothing a bench started is left running.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from hearth.bench import vm as bench_vm
from hearth.bench.auth import STAGES
from hearth.bench.cli import bench_app
from hearth.bench.errors import BenchError
from hearth.bench.oidc_install import ready_dir
from hearth.bench.vm import VmBenchOptions, run_vm_bench
from hearth.config import Settings
from hearth.images.manifest import ImageDir
from hearth.progress import LogProgress
from tests.fake_backend import FakeBackend
from tests.integration.store_fixtures import PostgresServer
from tests.vm.browser_fixtures import *  # noqa: F403
from tests.vm.conftest import qemu_pids_under

pytestmark = [pytest.mark.slow, pytest.mark.vm]

VM_ROUTE = "/api/vms/{vm_id}"


def run_bench(*args: str) -> Result:
    """``hearth bench …`` through a Typer app that registers ``bench_app`` as the CLI does."""
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    return CliRunner().invoke(
        app,
        ["bench", *args],
        env={"HEARTH_LOG_FORMAT": "json", "HEARTH_BENCH_DATABASE_URL": ""},
        catch_exceptions=False,
    )


def non_positive_numbers(doc: Any, where: str = "") -> list[str]:
    """Paths of every number in ``doc`` that is not > 0 (booleans are not numbers here)."""
    if isinstance(doc, bool):
        return []
    if isinstance(doc, int | float):
        return [] if doc > 0 else [f"{where} = {doc}"]
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in non_positive_numbers(v, f"{where}.{k}")]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in non_positive_numbers(v, f"{where}[{i}]")]
    return []


def processes_mentioning(directory: Path) -> list[str]:
    """Command lines of live processes that name ``directory`` (a controller, a VMM, …)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(directory).encode() in cmdline and state != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def processes_with_env(entry: str) -> list[int]:
    """Live processes whose environment holds ``entry`` (``NAME=value``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if entry.encode() in environ and state != "Z":
            found.append(int(proc.name))
    return found


def test_bench_vm_measures_every_start_path_once_and_leaves_no_vm(
    minimal_image: ImageDir, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    out = tmp_path / "vm.json"
    result = run_bench(
        "vm",
        "--n",
        "1",
        "--concurrency",
        "2",
        "--image",
        str(minimal_image.path),
        "--state-dir",
        str(state),
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "targets" in result.output

    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "vm"
    for section in ("cold", "restore", "pool", "baseline"):
        assert doc[section]["n"] == 1, section
        assert {"p50_s", "p95_s", "max_s"} <= set(doc[section]), section
    assert doc["concurrent"]["n"] == 2
    assert doc["pool"]["workspace"]["n"] == 1  # the bench user's workspace, at each hand-out
    assert doc["pool"]["agent_health"]["n"] == 3  # three round trips per hand-out
    assert doc["pool"]["health_ratio"] == pytest.approx(
        doc["pool"]["p50_s"] / doc["pool"]["agent_health"]["p50_s"]
    )
    assert doc["destroy"]["n"] >= 4  # cold, template's first restore, restore, 2 concurrent
    assert doc["restore_speedup_ratio"] == pytest.approx(
        doc["cold"]["p50_s"] / doc["restore"]["p50_s"]
    )
    assert doc["baseline_ratio"] == pytest.approx(
        doc["baseline"]["p50_s"] / doc["best_hearth_p50_s"]
    )
    for path in ("cold", "restore", "baseline"):
        assert doc["disk_bytes"][path]["n"] == 1
        assert doc["rss_bytes"][path]["n"] == 1
    # The old method copies the whole image; an overlay is a small fraction of it.
    assert doc["disk_bytes"]["baseline"]["max_bytes"] > doc["disk_bytes"]["restore"]["max_bytes"]
    assert doc["machine"]["accel"] in ("kvm", "tcg")
    assert doc["machine"]["cores"] >= 1
    assert {t["name"] for t in doc["targets"]} == {
        "restore_vs_cold",
        "pool_handout_p50",
        "pool_handout_vs_health",
        "disk_per_vm",
    }
    assert all(isinstance(t["met"], bool) for t in doc["targets"])
    assert non_positive_numbers(doc) == []

    assert qemu_pids_under(state) == [], "a QEMU process outlived the bench"
    for leftovers in (state / "vms", state / "baseline"):
        assert not leftovers.exists() or list(leftovers.iterdir()) == []


async def test_bench_vm_refuses_a_backend_without_a_qemu_baseline_before_any_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FakeBackend()
    monkeypatch.setattr(bench_vm, "open_backend", lambda settings: backend)
    options = VmBenchOptions(
        image=ImageDir(tmp_path / "image"), n=1, concurrency=1, state_dir=tmp_path / "state"
    )
    with pytest.raises(BenchError, match=r"QEMU start.*cannot run next to the fake backend"):
        await run_vm_bench(options, progress=LogProgress())
    assert backend.created == []
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_bench_api_measures_the_read_routes_and_stops_its_controller(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    args = ["api", "--n", "30", "--concurrency", "2", "--rate", "100"]
    if database == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        args += ["--database-url", server.admin_url.render_as_string(hide_password=False)]
    state = tmp_path / "state"
    out = tmp_path / "api.json"
    result = run_bench(*args, "--state-dir", str(state), "--json", str(out))
    assert result.exit_code == 0, result.output

    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "api"
    expected = {"sqlite", "postgresql"} if database == "postgresql" else {"sqlite"}
    assert set(doc["databases"]) == expected
    for name, measured in doc["databases"].items():
        endpoints = measured["endpoints"]
        assert VM_ROUTE in endpoints, name
        for route, endpoint in endpoints.items():
            assert endpoint["closed_loop"]["n"] == 30, (name, route)
            assert endpoint["open_loop"]["n"] == 30, (name, route)
            for load in ("closed_loop", "open_loop"):
                assert {"p50_s", "p99_s", "max_s"} <= set(endpoint[load])
        if not any(route.startswith("/api/auth/session/") for route in endpoints):
            assert any("/api/auth/session" in note for note in doc["notes"])
    if database == "sqlite":
        assert any("PostgreSQL skipped" in note for note in doc["notes"])
    assert doc["targets"]
    assert all(isinstance(t["met"], bool) for t in doc["targets"])
    assert non_positive_numbers(doc) == []

    assert processes_mentioning(state) == [], "the bench's controller outlived it"


def test_bench_auth_measures_one_flow_by_stage_and_leaves_nothing(
    minimal_image: ImageDir, browser_image: ImageDir, vm_state_dir: Path, tmp_path: Path
) -> None:
    # Installed ahead (scripts/test.sh does it), so the bench does not reach for the npm registry.
    reason = None if shutil.which("node") else "needs node (Node.js 20 or later)"
    try:
        ready_dir(Settings.from_env().cache_dir)
    except BenchError as exc:
        reason = reason or f"{exc.message} (scripts/test.sh does it)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    state = tmp_path / "state"
    out = tmp_path / "auth.json"
    result = run_bench(
        "auth",
        "--n",
        "1",
        "--cli-image",
        str(minimal_image.path),
        "--browser-image",
        str(browser_image.path),
        "--state-dir",
        str(state),
        # The session's templates (the end-to-end tests' ones): the bench prepares what is
        # missing there and builds nothing twice.
        "--template-dir",
        str(vm_state_dir / "templates"),
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "overhead" in result.output
    assert "targets" in result.output

    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "auth"
    assert doc["n"] == 1
    assert list(doc["stages"]) == [stage.name for stage in STAGES]
    assert set(doc["user_detail"]) == {"login_page_shown", "consent_page_shown"}
    summaries = [*doc["stages"].values(), *doc["user_detail"].values()]
    summaries += [doc["total"], doc["user"], doc["overhead"]]
    for summary in summaries:
        assert summary["n"] == 1
        assert {"p50_s", "p95_s", "max_s"} <= set(summary)
    (sample,) = doc["samples"]
    # The stages are the overhead, and the overhead is the total without the user's time.
    assert sample["overhead_s"] == pytest.approx(sample["total_s"] - sample["user_s"])
    assert sum(sample["stages_s"].values()) == pytest.approx(sample["overhead_s"])
    assert sample["cli_vm_boot_mode"] in ("restore", "cold", "pool")
    assert sample["browser_vm_boot_mode"] in ("restore", "cold", "pool")
    # Prepared before the controller started, as setup does: the first login builds none.
    assert "templates_built" not in doc["warmup"]
    assert doc["oidc"]["issuer"].startswith("http://10.0.2.")
    assert [t["name"] for t in doc["targets"]] == [
        "auth_flow_overhead",
        "auth_overhead_vs_vm_starts",
        "first_login_vs_warm",
    ]
    to_sign_in = ("cli_vm", "browser_vm_after_cli", "awaiting_user")
    first = sum(doc["warmup"]["stages_s"][s] for s in to_sign_in)
    warm = sum(sample["stages_s"][s] for s in to_sign_in)
    assert doc["first_login_vs_warm"] == pytest.approx(first / warm)
    # Each VM's own start, overlapping in the flow (the Browser VM boots beside the CLI VM).
    assert list(doc["vm_starts"]) == ["cli_vm", "browser_vm"]
    assert sample["vm_starts_s"]["cli_vm"] == sample["stages_s"]["cli_vm"]
    vm_starts = doc["vm_starts"]["cli_vm"]["p50_s"] + doc["vm_starts"]["browser_vm"]["p50_s"]
    assert doc["overhead_vs_vm_starts"] == pytest.approx(doc["overhead"]["p50_s"] / vm_starts)
    assert all(isinstance(t["met"], bool) for t in doc["targets"])
    # What is left of the Browser VM's start once the CLI VM is ready may be nothing at all
    # (it boots beside it); every other figure is a time that passed.
    hidden = [s["stages_s"].pop("browser_vm_after_cli") for s in (*doc["samples"], doc["warmup"])]
    assert min(hidden) >= 0
    doc["stages"].pop("browser_vm_after_cli")
    assert non_positive_numbers(doc) == []

    assert qemu_pids_under(state) == [], "a QEMU process outlived the bench"
    assert processes_mentioning(state) == [], "the bench's controller outlived it"
    issuer = doc["oidc"]["issuer"]
    assert processes_with_env(f"ISSUER={issuer}") == [], "the bench's OAuth server outlived it"


def test_bench_run_measures_each_ratio_once_and_leaves_nothing(
    minimal_image: ImageDir, cli_image: ImageDir, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    out = tmp_path / "run.json"
    # One vendor CLI, one round: codex's runs are the quickest under TCG (≈ 10 s each).
    result = run_bench(
        "run",
        "--n",
        "3",
        "--bytes",
        str(2 * 2**20),
        "--rounds",
        "1",
        "--image",
        str(minimal_image.path),
        "--run-image",
        str(cli_image.path),
        "--provider",
        "codex",
        "--run-rounds",
        "1",
        "--state-dir",
        str(state),
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "targets" in result.output
    assert "not measured" not in result.output

    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "run"
    trips = doc["round_trips"]
    assert {kind: trips[kind]["n"] for kind in trips} == {
        "exec": 3,
        "agent_health": 3,
        "agent_health_kept_alive": 3,
        "agent_exec": 3,
    }
    assert set(doc["transfers"]) == {"exec_output", "raw_out", "upload", "raw_in", "download"}
    assert all(transfer["n"] == 1 for transfer in doc["transfers"].values())
    assert doc["ratios"]["exec_round_trip"] == pytest.approx(
        trips["exec"]["p50_s"] / trips["agent_health"]["p50_s"]
    )
    assert [t["name"] for t in doc["targets"]] == [
        "exec_round_trip",
        "exec_output",
        "file_upload",
        "file_download",
        "run_first_event_codex",
    ]
    assert all(isinstance(t["met"], bool) for t in doc["targets"])
    assert doc["not_measured"] == []
    codex = doc["runs"]["providers"]["codex"]
    assert codex["first_event"] == "message.delta"  # its opening lines make no event
    assert {kind: codex[kind]["n"] for kind in codex if kind != "first_event"} == {
        "hearth": 1,
        "direct": 1,
        "hearth_run_started": 1,
        "direct_first_line": 1,
    }
    # A run's first event from the CLI comes after run.started, and directly after its first line.
    assert codex["hearth"]["p50_s"] > codex["hearth_run_started"]["p50_s"]
    assert codex["direct"]["p50_s"] >= codex["direct_first_line"]["p50_s"]
    assert doc["ratios"]["run_first_event_codex"] == pytest.approx(
        codex["hearth"]["p50_s"] / codex["direct"]["p50_s"]
    )
    assert doc["runs"]["vm"]["mem_mib"] == 2048
    # A process may sit idle through a whole transfer (the controller under raw TCP): 0 cores.
    cpu = {name: t.pop("cpu_cores_mean") for name, t in doc["transfers"].items()}
    assert all(set(cores) == {"qemu", "controller", "client"} for cores in cpu.values())
    assert non_positive_numbers(doc) == []

    assert qemu_pids_under(state) == [], "a QEMU process outlived the bench"
    assert processes_mentioning(state) == [], "the bench's controller outlived it"
    for controller in (state / "controller", state / "runs" / "controller"):
        vms = controller / "vms"
        assert not vms.exists() or list(vms.iterdir()) == []
    assert not (state / "runs" / "image").exists(), "the trusted image copy was left"

"""``hearth bench run`` without a VM: its ratios and verdicts from fake figures (the run part's
too), its report, and the raw TCP server it starts in the guest, run here on loopback against the
bench's own client.

The bench against a real VM is in ``tests/vm/test_bench.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from hearth.bench.cli import bench_app
from hearth.bench.errors import BenchError
from hearth.bench.guest_stream import GuestStreamClient, guest_stream_command
from hearth.bench.machine import MachineFacts
from hearth.bench.report import print_tables
from hearth.bench.run import TRANSFERS, RunBenchOptions, RunBenchResult, run_run_bench
from hearth.bench.run_first_event import FirstEvents, RunPartOptions, RunPartResult
from hearth.bench.run_report import (
    RUN_FIRST_EVENT_REASON,
    RunFigures,
    mean_cpu,
    run_document,
    run_tables,
)
from hearth.images.manifest import ImageDir
from hearth.progress import LogProgress
from hearth.vm.host import free_local_port
from hearth.vm.readiness import Deadline
from hearth_agent.wire import Provider
from tests.conftest import write_manifest

MIB = 2**20


def machine() -> MachineFacts:
    return MachineFacts(
        cores=2,
        cpu_model="test CPU",
        memory_mib=4096,
        accel="tcg",
        accel_reason="test",
        qemu="QEMU 7.2",
        kernel="6.1",
        os="Debian",
        python="3.11",
        hearth="0.1.0",
        load_average="0.10 0.20 0.30",
    )


def result_with(
    tmp_path: Path,
    *,
    exec_s: list[float],
    health_s: list[float],
    rates: dict[str, list[float]],
) -> RunBenchResult:
    """A result holding the given figures (seconds; bytes per second by transfer)."""
    options = RunBenchOptions(
        n=len(exec_s), bytes=8 * MIB, rounds=3, state_dir=tmp_path, image=ImageDir(tmp_path)
    )
    result = RunBenchResult(options=options, machine=machine())
    result.vm = {"id": "vm-1", "boot_mode": "restore", "create_s": 1.5, "vcpus": 1, "mem_mib": 512}
    result.exec_round_trip = exec_s
    result.agent_health = health_s
    result.agent_health_kept_alive = [s / 2 for s in health_s]
    result.agent_exec_round_trip = [s * 0.8 for s in exec_s]
    result.transfers = rates
    result.transfer_cpu = {
        name: [{"qemu": 0.9, "controller": 0.5, "client": 0.25} for _ in samples]
        for name, samples in rates.items()
    }
    return result


def even_rates(**by_name: list[float]) -> dict[str, list[float]]:
    """Rates per transfer: ``by_name`` where given, 100 MiB/s for the others."""
    return {name: by_name.get(name, [100 * MIB] * 3) for name in TRANSFERS}


def test_ratios_come_from_the_p50s_of_hearth_and_of_the_same_vms_own_path(
    tmp_path: Path,
) -> None:
    result = result_with(
        tmp_path,
        exec_s=[0.030, 0.010, 0.020, 0.500, 0.040],  # p50 0.030
        health_s=[0.010, 0.012, 0.011, 0.002, 0.200],  # p50 0.011
        rates=even_rates(
            exec_output=[10 * MIB, 30 * MIB, 20 * MIB],  # p50 20
            raw_out=[80 * MIB, 40 * MIB, 60 * MIB],  # p50 60
            upload=[25 * MIB, 5 * MIB, 50 * MIB],  # p50 25
            raw_in=[50 * MIB, 50 * MIB, 50 * MIB],
            download=[45 * MIB, 45 * MIB, 45 * MIB],
        ),
    )
    ratios = {r.name: r.value for r in RunFigures.of(result).ratios()}
    assert ratios == pytest.approx(
        {
            "exec_round_trip": 0.030 / 0.011,
            "exec_output": 20 / 60,
            "file_upload": 25 / 50,
            "file_download": 45 / 60,
        }
    )
    verdicts = {t.name: t.met for t in RunFigures.of(result).targets()}
    assert verdicts == {
        "exec_round_trip": False,  # 2.7x > 2x
        "exec_output": False,  # 0.33x < 0.5x
        "file_upload": True,  # exactly 0.5x is on target
        "file_download": True,
    }


def test_a_round_trip_exactly_twice_the_agents_meets_its_target_and_just_over_does_not(
    tmp_path: Path,
) -> None:
    rates = even_rates()
    at_bound = result_with(tmp_path, exec_s=[0.020], health_s=[0.010], rates=rates)
    over = result_with(tmp_path, exec_s=[0.0201], health_s=[0.010], rates=rates)
    assert RunFigures.of(at_bound).targets()[0].met is True
    assert RunFigures.of(over).targets()[0].met is False


def test_the_document_holds_every_figure_the_ratios_and_what_was_not_measured(
    tmp_path: Path,
) -> None:
    result = result_with(tmp_path, exec_s=[0.03] * 3, health_s=[0.01] * 3, rates=even_rates())
    doc = json.loads(json.dumps(run_document(result, command="hearth bench run --n 3")))
    assert doc["benchmark"] == "run"
    assert doc["command"] == "hearth bench run --n 3"
    assert (doc["n"], doc["bytes"], doc["rounds"]) == (3, 8 * MIB, 3)
    assert set(doc["round_trips"]) == {
        "exec",
        "agent_health",
        "agent_health_kept_alive",
        "agent_exec",
    }
    assert doc["round_trips"]["exec"]["p50_s"] == pytest.approx(0.03)
    assert set(doc["transfers"]) == set(TRANSFERS)
    upload = doc["transfers"]["upload"]
    assert upload["p50_bytes_per_s"] == 100 * MIB
    assert upload["samples_bytes_per_s"] == [100 * MIB] * 3
    assert upload["cpu_cores_mean"] == {"qemu": 0.9, "controller": 0.5, "client": 0.25}
    assert doc["ratios"]["exec_round_trip"] == pytest.approx(3.0)
    assert [t["name"] for t in doc["targets"]] == [
        "exec_round_trip",
        "exec_output",
        "file_upload",
        "file_download",
    ]
    assert doc["runs"] is None
    assert doc["not_measured"] == [
        {
            "name": "run_first_event",
            "goal": doc["not_measured"][0]["goal"],
            "reason": RUN_FIRST_EVENT_REASON,
        }
    ]
    assert "--no-runs" in RUN_FIRST_EVENT_REASON
    assert doc["image"]["recipe"] == "unknown"  # no manifest in the fake image dir


def test_the_tables_show_each_ratio_its_verdict_and_the_run_ratio_as_not_measured(
    tmp_path: Path,
) -> None:
    result = result_with(
        tmp_path,
        exec_s=[0.050] * 3,
        health_s=[0.010] * 3,
        rates=even_rates(exec_output=[10 * MIB] * 3),
    )
    console = Console(record=True, width=240)
    print_tables(console, run_tables(result))
    text = console.export_text()
    assert "5.00x" in text  # exec 50 ms / health 10 ms
    assert "0.100x" in text  # exec output 10 / raw 100 MiB/s
    lines = text.splitlines()
    # Exec round trip and exec output miss their targets; upload and download are on them.
    assert sum("not met" in line for line in lines) == 2
    assert sum(" met " in line and "not met" not in line for line in lines) == 2
    assert RUN_FIRST_EVENT_REASON in text
    assert "0.90/0.50/0.25" in text  # the cores of QEMU, the controller and the client


def with_runs(result: RunBenchResult, **by_provider: tuple[list[float], list[float]]) -> None:
    """Give ``result`` a run part: per provider, (through Hearth, directly) first-event seconds."""
    options = RunPartOptions(
        image=result.options.image, providers=tuple(Provider(p) for p in by_provider), rounds=3
    )
    result.runs = RunPartResult(options=options)
    result.runs.vm = {"id": "vm-2", "boot_mode": "cold", "vcpus": 1, "mem_mib": 2048}
    for name, (hearth, direct) in by_provider.items():
        result.runs.by_provider[Provider(name)] = FirstEvents(
            hearth=hearth,
            direct=direct,
            hearth_run_started=[0.2] * len(hearth),
            direct_first_line=[s / 2 for s in direct],
            first_event="message.delta",
        )


def test_each_vendors_run_ratio_is_hearths_first_event_p50_over_the_direct_p50(
    tmp_path: Path,
) -> None:
    result = result_with(tmp_path, exec_s=[0.03], health_s=[0.01], rates=even_rates())
    with_runs(
        result,
        claude_code=([5.0, 9.0, 6.0], [5.0, 4.0, 6.0]),  # p50 6.0 / 5.0
        codex=([11.0, 12.0, 13.0], [10.0, 10.0, 10.0]),  # p50 12.0 / 10.0
        gemini_cli=([5.5, 5.5, 5.5], [5.0, 5.0, 5.0]),  # exactly 1.1x
    )
    figures = RunFigures.of(result)
    ratios = {r.name: r.value for r in figures.ratios()}
    assert ratios["run_first_event_claude_code"] == pytest.approx(1.2)
    assert ratios["run_first_event_codex"] == pytest.approx(1.2)
    verdicts = {t.name: t.met for t in figures.targets()}
    assert verdicts["run_first_event_claude_code"] is False
    assert verdicts["run_first_event_gemini_cli"] is True  # 1.1x is on target
    measured = {t.name: t.measured for t in figures.targets()}
    assert measured["run_first_event_codex"] == "12.00 s / 10.00 s = 1.20x"


def test_the_document_holds_each_vendors_first_event_figures_and_nothing_unmeasured(
    tmp_path: Path,
) -> None:
    result = result_with(tmp_path, exec_s=[0.03], health_s=[0.01], rates=even_rates())
    with_runs(result, codex=([12.0, 11.0, 13.0], [10.0, 9.0, 11.0]))
    doc = json.loads(json.dumps(run_document(result, command="hearth bench run")))
    assert doc["not_measured"] == []
    runs = doc["runs"]
    assert runs["vm"]["mem_mib"] == 2048
    assert (runs["prompt"], runs["rounds"], runs["warmup"]) == ("Say hello", 3, 1)
    codex = runs["providers"]["codex"]
    assert codex["first_event"] == "message.delta"
    assert codex["hearth"]["p50_s"] == 12.0
    assert codex["direct"]["samples_s"] == [10.0, 9.0, 11.0]
    assert codex["hearth_run_started"]["p50_s"] == 0.2
    assert codex["direct_first_line"]["p50_s"] == 5.0
    assert doc["ratios"]["run_first_event_codex"] == pytest.approx(1.2)
    assert doc["targets"][-1]["name"] == "run_first_event_codex"


def test_the_tables_show_each_vendors_first_events_and_their_ratio_verdict(
    tmp_path: Path,
) -> None:
    result = result_with(tmp_path, exec_s=[0.02], health_s=[0.01], rates=even_rates())
    with_runs(result, claude_code=([6.6, 6.6, 6.6], [6.0, 6.0, 6.0]))  # 1.10x: met
    console = Console(record=True, width=240)
    print_tables(console, run_tables(result))
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("claude_code"))
    assert "message.delta" in row
    assert "6.60 s" in row
    assert "6.00 s" in row
    assert "3.00 s" in row  # the CLI's first stdout line, directly
    ratio = next(line for line in text.splitlines() if "run of claude_code" in line)
    assert "1.10x" in ratio
    assert RUN_FIRST_EVENT_REASON not in text
    assert "run part's CLI VM" in text
    target = next(line for line in text.splitlines() if "(claude_code)" in line)
    assert " met " in target + " "
    assert "not met" not in target


def test_the_run_part_takes_only_vendor_clis_and_at_least_one_round(tmp_path: Path) -> None:
    image = ImageDir(tmp_path)
    with pytest.raises(BenchError, match="oidc"):
        RunPartOptions(image=image, providers=(Provider.CODEX, Provider.OIDC))
    with pytest.raises(BenchError, match="vendor CLIs"):
        RunPartOptions(image=image, providers=())
    with pytest.raises(BenchError, match="round"):
        RunPartOptions(image=image, rounds=0)


async def test_bench_refuses_a_run_image_without_the_vendor_clis_before_starting_anything(
    tmp_path: Path,
) -> None:
    image = tmp_path / "image"
    image.mkdir()
    (image / "rootfs.ext4").write_bytes(b"x")
    write_manifest(image, sizes={"rootfs.ext4": 1})
    options = RunBenchOptions(
        state_dir=tmp_path / "state",
        image=ImageDir(image),
        runs=RunPartOptions(image=ImageDir(image)),
    )
    with pytest.raises(BenchError, match="minimal image, without the vendor CLIs"):
        await run_run_bench(options, progress=LogProgress())
    assert not (tmp_path / "state").exists()


def test_mean_cpu_is_empty_for_a_transfer_without_samples(tmp_path: Path) -> None:
    result = result_with(tmp_path, exec_s=[0.01], health_s=[0.01], rates=even_rates())
    result.transfer_cpu["upload"] = []
    assert mean_cpu(result, "upload") == {}


async def test_bench_refuses_a_vmm_without_a_user_net_forward_before_starting_anything(
    tmp_path: Path,
) -> None:
    options = RunBenchOptions(
        state_dir=tmp_path / "state", image=ImageDir(tmp_path / "image"), vmm="firecracker"
    )
    with pytest.raises(BenchError, match="QEMU user-net forward"):
        await run_run_bench(options, progress=LogProgress())
    assert not (tmp_path / "state").exists()


def test_bench_run_is_registered_with_its_options() -> None:
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    result = CliRunner().invoke(app, ["bench", "run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    options = ("--n", "--bytes", "--rounds", "--json", "--image", "--state-dir", "--no-runs")
    for option in (*options, "--run-image", "--provider", "--run-rounds"):
        assert option in result.output


# ---- the guest's raw TCP server, on loopback -----------------------------------------------


@pytest.fixture
def stream_server(tmp_path: Path) -> Iterator[GuestStreamClient]:
    """The guest's raw TCP server run here (cwd: a scratch dir), and a client of it."""
    port = free_local_port()
    _, flag, script, port_arg = guest_stream_command(port)
    process = subprocess.Popen(
        [sys.executable, flag, script, port_arg],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield GuestStreamClient("127.0.0.1", port, timeout_s=30)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL


async def test_the_raw_server_writes_what_it_receives_and_sends_a_file_back_whole(
    stream_server: GuestStreamClient, tmp_path: Path
) -> None:
    await stream_server.wait_ready(Deadline.after(15))
    data = os.urandom(3 * MIB + 17)
    assert await stream_server.receive("in/raw.bin", data) == len(data)
    assert (tmp_path / "in" / "raw.bin").read_bytes() == data
    assert await stream_server.send("in/raw.bin") == len(data)
    # One request per connection: the server goes on after each.
    assert await stream_server.send("in/raw.bin") == len(data)


async def test_the_raw_server_survives_a_bad_request_and_a_missing_file(
    stream_server: GuestStreamClient,
) -> None:
    await stream_server.wait_ready(Deadline.after(15))
    assert await stream_server.send("no/such/file") == 0
    with pytest.raises(BenchError, match="raw TCP into the VM"):
        await stream_server.receive("/proc/forbidden/x", b"abc")
    await stream_server.wait_ready(Deadline.after(5))


async def test_waiting_for_a_raw_server_that_never_answers_fails_with_its_address() -> None:
    client = GuestStreamClient("127.0.0.1", free_local_port(), timeout_s=5)
    with pytest.raises(BenchError, match=r"127\.0\.0\.1:\d+ never answered"):
        await client.wait_ready(Deadline.after(0.5))

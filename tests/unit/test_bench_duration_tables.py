"""The duration tables of ``hearth bench vm`` and ``hearth bench auth``: each row a label, then
n, p50, p95 and max of its samples, the figures right-aligned (``hearth bench run``'s round
trips are in ``tests/integration/test_bench_run.py``); and the stages in auth's JSON document."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from hearth.bench.auth import (
    STAGES,
    TOTAL,
    USER,
    USER_DETAIL,
    VM_STARTS,
    AuthBenchOptions,
    AuthBenchResult,
    FlowSample,
)
from hearth.bench.auth_report import auth_document, auth_tables
from hearth.bench.report import vm_tables
from hearth.bench.vm import VmBenchOptions, VmBenchResult, VmSample
from hearth.images.manifest import ImageDir
from tests.integration.test_bench_run import machine


def _header(table: Table) -> list[str]:
    """Each column's name."""
    return [str(column.header) for column in table.columns]


def _aligned(table: Table) -> list[str]:
    """How each column is aligned."""
    return [column.justify for column in table.columns]


def _row(table: Table, label: str) -> list[str]:
    """The cells of the row labelled ``label``, and its style last."""
    index = [str(cell) for cell in table.columns[0].cells].index(label)
    cells = [str(list(column.cells)[index]) for column in table.columns]
    return [*cells, str(table.rows[index].style or "")]


def test_the_vm_table_shows_each_path_with_n_p50_p95_max_disk_and_rss(tmp_path: Path) -> None:
    image = ImageDir(tmp_path)
    image.rootfs.write_bytes(b"\0" * 4096)
    mib = 2**20
    # 21 cold boots: the nearest-rank p95 is the 20th, not the largest.
    cold = [VmSample(create_s=s, disk_bytes=mib, rss_bytes=2 * mib) for s in range(1, 21)]
    cold.append(VmSample(create_s=100.0, disk_bytes=mib, rss_bytes=2 * mib))
    result = VmBenchResult(
        options=VmBenchOptions(image=image, n=21, concurrency=2, state_dir=tmp_path),
        machine=machine(),
        baseline=[VmSample(create_s=2.0, disk_bytes=3 * mib, rss_bytes=200 * mib)],
        cold=cold,
        restore=[VmSample(create_s=0.25, disk_bytes=mib, rss_bytes=mib)],
        pool=[0.01, 0.02],
        pool_workspace=[0.004, 0.005],
        agent_health=[0.002],
        concurrent=[0.5, 0.6],
        destroy=[0.1],
    )

    timing = vm_tables(result)[1]

    assert _header(timing) == ["path", "n", "p50", "p95", "max", "disk / VM", "RSS / VM"]
    assert _aligned(timing) == ["left"] + ["right"] * 6
    assert _row(timing, "cold boot") == [
        "cold boot",
        "21",
        "11.00 s",
        "20.00 s",
        "100.00 s",
        "1.0 MiB",
        "2.0 MiB",
        "",
    ]
    assert _row(timing, "destroy")[1:] == ["1", "100.0 ms", "100.0 ms", "100.0 ms", "", "", ""]


def _flow(n: int, step_s: float) -> FlowSample:
    """A flow whose marks come one ``step_s`` after another, in the order a login makes them."""
    names = (
        "browser_vm_created",
        "cli_vm_ready",
        "browser_vm_ready",
        "vms_ready",
        "awaiting_user",
        "login_shown",
        "login_submitted",
        "consent_shown",
        "submitted",
        "credentials_captured",
        "delivering",
        "completed",
    )
    marks = {"start": 0.0} | {name: (i + 1) * step_s for i, name in enumerate(names)}
    return FlowSample(
        user_id=f"u{n}",
        session_id=f"s{n}",
        marks=marks,
        cli_boot_mode="restore",
        browser_boot_mode="restore",
        templates_built=0,
    )


def _auth_result(tmp_path: Path) -> AuthBenchResult:
    """Two measured flows, of half-second and of 1.5 s steps."""
    image = ImageDir(tmp_path)
    options = AuthBenchOptions(
        n=2, state_dir=tmp_path, cli_image=image, browser_image=image, oidc_server_dir=tmp_path
    )
    flows = [_flow(1, 0.5), _flow(2, 1.5)]
    return AuthBenchResult(options=options, machine=machine(), samples=flows)


def test_the_auth_table_shows_each_stage_with_n_p50_p95_and_max(tmp_path: Path) -> None:
    stages = auth_tables(_auth_result(tmp_path))[1]

    assert _header(stages) == ["stage", "n", "p50", "p95", "max"]
    assert _aligned(stages) == ["left"] + ["right"] * 4
    # start → cli_vm_ready is two steps: 1 s and 3 s.
    assert _row(stages, STAGES[0].label) == [STAGES[0].label, "2", "1.00 s", "3.00 s", "3.00 s", ""]
    assert _row(stages, TOTAL.label)[1:] == ["2", "6.00 s", "18.00 s", "18.00 s", ""]
    # The user's part (awaiting_user → submitted) is four steps of the twelve: dim, not overhead.
    assert _row(stages, f"{USER.label}, not overhead")[1:] == [
        "2",
        "2.00 s",
        "6.00 s",
        "6.00 s",
        "dim",
    ]
    assert _row(stages, f"  of which: {USER_DETAIL[0].label}")[1:] == [
        "2",
        "500.0 ms",
        "1.50 s",
        "1.50 s",
        "dim",
    ]
    assert _row(stages, "overhead (total - user)")[1:] == [
        "2",
        "4.00 s",
        "12.00 s",
        "12.00 s",
        "bold",
    ]
    assert _row(stages, f"{VM_STARTS[1].label}, overlapping")[1:] == [
        "2",
        "1.00 s",
        "3.00 s",
        "3.00 s",
        "dim",
    ]


def test_the_auth_document_names_each_stage_its_marks_and_its_durations(tmp_path: Path) -> None:
    # As written to the file: the test reads it as JSON.
    document = json.loads(json.dumps(auth_document(_auth_result(tmp_path), command="c")))

    # Both stages below take 1 s in the first flow and 3 s in the second.
    durations = {"n": 2, "p50_s": 1.0, "p95_s": 3.0, "p99_s": 3.0, "min_s": 1.0, "max_s": 3.0}
    durations |= {"mean_s": 2.0, "samples_s": [1.0, 3.0]}
    assert document["stages"]["cli_vm"] == {
        "label": STAGES[0].label,
        "from": "start",
        "to": "cli_vm_ready",
        **durations,
    }
    assert list(document["stages"]) == [s.name for s in STAGES]
    assert document["vm_starts"]["browser_vm"] == {
        "label": VM_STARTS[1].label,
        "from": "browser_vm_created",
        "to": "browser_vm_ready",
        **durations,
    }
    assert list(document["user_detail"]) == [s.name for s in USER_DETAIL]
    assert document["user_detail"]["consent_page_shown"]["to"] == "consent_shown"

"""``hearth bench restarts``'s verdict and report, from outcomes; its refusal of unknown points."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.bench.errors import BenchError
from hearth.bench.machine import MachineFacts
from hearth.bench.restarts import (
    Outcome,
    RestartsOptions,
    RestartsResult,
    restarts_document,
    restarts_tables,
    restarts_target,
    run_restarts_bench,
)
from hearth.images.manifest import ImageDir
from hearth.progress import default_progress
from hearth.vm.accel import Accel


def _result(tmp_path: Path, *, points: tuple[str, ...] = ("awaiting_user",)) -> RestartsResult:
    options = RestartsOptions(
        n=2,
        state_dir=tmp_path,
        cli_image=ImageDir(tmp_path),
        browser_image=ImageDir(tmp_path),
        oidc_server_dir=tmp_path,
        points=points,
    )
    return RestartsResult(options=options, machine=MachineFacts.collect(Accel("tcg", "test")))


def _outcome(status: str, error: str | None = None) -> Outcome:
    return Outcome(
        point="awaiting_user",
        how="kill9",
        landed="awaiting_user",
        delay_s=1.0,
        status=status,
        error=error,
        seconds=30.0,
    )


def test_the_target_is_met_only_when_every_login_completes(tmp_path: Path) -> None:
    result = _result(tmp_path)
    result.outcomes = [_outcome("completed"), _outcome("completed")]
    assert restarts_target(result).met
    assert restarts_target(result).measured == "2 of 2 completed"
    result.outcomes.append(_outcome("failed", "the Browser VM died"))
    target = restarts_target(result)
    assert not target.met
    assert target.measured == "2 of 3 completed"
    document = restarts_document(result, command="hearth bench restarts --n 2")
    assert document["targets"] == [target.to_dict()]
    assert [o["survived"] for o in document["outcomes"]] == [True, True, False]  # type: ignore[index, union-attr]
    assert len(restarts_tables(result)) == 3


async def test_an_unknown_point_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = _result(tmp_path, points=("after_lunch",))
    with pytest.raises(BenchError, match="unknown restart points"):
        await run_restarts_bench(result.options, progress=default_progress("bench"))
    assert list(tmp_path.iterdir()) == []

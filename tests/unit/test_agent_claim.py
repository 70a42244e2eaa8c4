"""The /init body rules and the bearer-token gate, without a server."""

from __future__ import annotations

import base64
import functools
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hearth_agent.claim import AuthGate, AuthMode, ClaimRequest, parse_claim
from hearth_agent.entropy import reseed_kernel
from hearth_agent.errors import (
    AlreadyClaimed,
    ConfigError,
    InvalidInput,
    ReseedFailed,
    Unauthorized,
    Unclaimed,
)
from hearth_agent.log import JsonLogger

TOKEN = "T" * 32 + "_-abc123"


@pytest.fixture
def logger() -> JsonLogger:
    """A logger writing to the test's stderr."""
    return JsonLogger()


def test_parse_claim_accepts_token_time_and_entropy() -> None:
    request = parse_claim({"token": TOKEN, "time": 1_700_000_000, "entropy": "AAEC"})
    assert request == ClaimRequest(token=TOKEN, time=1_700_000_000.0, entropy=b"\x00\x01\x02")


def test_claim_request_repr_hides_the_token() -> None:
    assert TOKEN not in repr(parse_claim({"token": TOKEN}))


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"token": "a" * 31}, "token"),
        ({"token": "a" * 513}, "token"),
        ({"token": "a" * 40 + " "}, "token"),
        ({"token": "a" * 40 + "=" }, "token"),
        ({"token": TOKEN, "time": float("inf")}, "time"),
        ({"token": TOKEN, "time": -5}, "time"),
        ({"token": TOKEN, "time": False}, "time"),
        ({"token": TOKEN, "entropy": 5}, "entropy"),
        ({"token": TOKEN, "entropy": "é"}, "entropy"),
        ({"token": TOKEN, "entropy": base64.b64encode(bytes(4097)).decode()}, "entropy"),
    ],
)  # fmt: skip
def test_parse_claim_names_the_bad_field(body: dict[str, object], field_name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_claim(body)
    assert f"'{field_name}'" in caught.value.message
    assert TOKEN not in caught.value.message


def test_parse_claim_accepts_the_length_limits() -> None:
    parse_claim({"token": "a" * 32})
    parse_claim({"token": "a" * 512, "entropy": base64.b64encode(bytes(4096)).decode()})


def test_gate_without_token_file_or_insecure_flag_refuses_to_start(logger: JsonLogger) -> None:
    with pytest.raises(ConfigError, match="token file"):
        AuthGate.from_options(token_file=None, insecure=False, allow_claim=False, logger=logger)


def test_gate_with_an_empty_token_file_and_allow_claim_is_unclaimed(
    tmp_path: Path, logger: JsonLogger
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    gate = AuthGate.from_options(
        token_file=token_file, insecure=False, allow_claim=True, logger=logger
    )
    assert gate.mode is AuthMode.UNCLAIMED
    with pytest.raises(Unclaimed):
        gate.authorize(f"Bearer {TOKEN}")


def test_gate_checks_the_bearer_token(tmp_path: Path, logger: JsonLogger) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    gate = AuthGate.from_options(
        token_file=token_file, insecure=False, allow_claim=False, logger=logger
    )

    gate.authorize(f"Bearer {TOKEN}")
    gate.authorize(f"bearer {TOKEN}")
    for header in (None, "", TOKEN, f"Basic {TOKEN}", "Bearer ", f"Bearer {TOKEN}x"):
        with pytest.raises(Unauthorized) as caught:
            gate.authorize(header)
        assert not isinstance(caught.value, Unclaimed)
    with pytest.raises(AlreadyClaimed):
        gate.ensure_claimable()


def test_claim_writes_the_token_file_privately_once(tmp_path: Path, logger: JsonLogger) -> None:
    token_file = tmp_path / "run" / "hearth" / "token"
    gate = AuthGate.from_options(
        token_file=token_file, insecure=False, allow_claim=True, logger=logger, reseed=None
    )

    result = gate.claim(parse_claim({"token": TOKEN}))

    assert (result.clock_set, result.reseeded, result.entropy_bits) == (False, False, 0)
    assert token_file.read_text().strip() == TOKEN
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(token_file.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(token_file.parent.parent).st_mode) == 0o700
    gate.authorize(f"Bearer {TOKEN}")
    with pytest.raises(AlreadyClaimed):
        gate.claim(parse_claim({"token": "b" * 40}))
    assert token_file.read_text().strip() == TOKEN


def unclaimed_gate(
    token_file: Path, logger: JsonLogger, *, set_clock: Callable[[float], bool] | None
) -> AuthGate:
    """A gate waiting for its claim, without reseeding, with ``set_clock``."""
    return AuthGate.from_options(
        token_file=token_file,
        insecure=False,
        allow_claim=True,
        logger=logger,
        reseed=None,
        set_clock=set_clock,
    )


def test_a_claim_sets_the_clock_only_through_the_gates_clock_setter(
    tmp_path: Path, logger: JsonLogger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stepped: list[float] = []
    monkeypatch.setattr(time, "clock_settime", lambda clock, epoch: stepped.append(epoch))
    # As the agent's main builds it for --no-reseed: neither a reseeder nor a clock setter.
    silent = unclaimed_gate(tmp_path / "a" / "token", logger, set_clock=None)
    told: list[float] = []
    setting = unclaimed_gate(
        tmp_path / "b" / "token", logger, set_clock=lambda t: told.append(t) is None
    )

    left = silent.claim(parse_claim({"token": TOKEN, "time": 1.0e9}))
    set_ = setting.claim(parse_claim({"token": TOKEN, "time": 1.5e9}))

    assert (stepped, left.clock_set) == ([], False)
    assert (told, set_.clock_set) == ([1.5e9], True)


def test_insecure_gate_lets_everything_through_and_cannot_be_claimed(
    logger: JsonLogger,
) -> None:
    gate = AuthGate.from_options(token_file=None, insecure=True, allow_claim=False, logger=logger)
    gate.authorize(None)
    assert gate.claimed is False
    with pytest.raises(AlreadyClaimed):
        gate.claim(parse_claim({"token": TOKEN}))


def test_claim_reseeds_before_it_stores_the_token(tmp_path: Path, logger: JsonLogger) -> None:
    token_file = tmp_path / "token"
    seen: list[tuple[bytes, bool]] = []

    def reseed(entropy: bytes) -> int:
        seen.append((entropy, token_file.exists()))
        return len(entropy) * 8

    gate = AuthGate.from_options(
        token_file=token_file, insecure=False, allow_claim=True, logger=logger, reseed=reseed
    )
    entropy = os.urandom(64)

    result = gate.claim(parse_claim({"token": TOKEN, "entropy": _b64(entropy)}))

    assert seen == [(entropy, False)]
    assert (result.reseeded, result.entropy_bits) == (True, 512)
    assert token_file.read_text().strip() == TOKEN


def test_a_claim_whose_reseed_fails_stores_nothing_and_can_be_retried(
    tmp_path: Path, logger: JsonLogger
) -> None:
    token_file = tmp_path / "token"
    not_a_device = tmp_path / "urandom"
    not_a_device.write_bytes(b"")
    gate = AuthGate.from_options(
        token_file=token_file,
        insecure=False,
        allow_claim=True,
        logger=logger,
        reseed=functools.partial(reseed_kernel, device=not_a_device),
    )
    request = parse_claim({"token": TOKEN, "entropy": _b64(os.urandom(64))})

    with pytest.raises(ReseedFailed, match="RNDADDENTROPY"):
        gate.claim(request)

    assert not token_file.exists()
    assert gate.mode is AuthMode.UNCLAIMED
    gate.ensure_claimable()


def test_reseed_needs_at_least_32_bytes(tmp_path: Path) -> None:
    with pytest.raises(ReseedFailed, match="32 bytes"):
        reseed_kernel(os.urandom(31), device=tmp_path / "unused")


def test_the_largest_entropy_a_claim_takes_reaches_the_kernel(tmp_path: Path) -> None:
    # Past 1016 bytes CPython refused the ioctl's immutable argument (ValueError): a claim the
    # parser accepted (up to 4096) crashed the agent's /init into a 500. A regular file stands
    # for the device: the kernel itself is reached, and refuses it as no random device.
    largest = parse_claim({"token": "t" * 43, "entropy": _b64(os.urandom(4096))}).entropy
    assert largest is not None
    device = tmp_path / "not-a-random-device"
    device.write_bytes(b"")
    with pytest.raises(ReseedFailed, match="RNDADDENTROPY"):
        reseed_kernel(largest, device=device)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

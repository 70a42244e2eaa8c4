"""Bearer-token authentication and the one-time claim of an unclaimed agent via POST /init.

The claim is the first request a VM restored from a snapshot receives that matters: it reseeds
the guest kernel's CRNG with the controller's entropy (``hearth_agent.entropy``) before it stores
the token, and refuses the claim, storing nothing, if that fails. Between the restore and the
claim only ``GET /health`` reaches the agent, and nothing in the guest keeps randomness drawn then.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from hearth_agent.entropy import MIN_RESEED_BYTES, reseed_kernel
from hearth_agent.errors import (
    AlreadyClaimed,
    ConfigError,
    InvalidInput,
    StorageError,
    Unauthorized,
    Unclaimed,
)
from hearth_agent.log import JsonLogger
from hearth_agent.storage import DIR_MODE, atomic_write

# Credits entropy to the guest kernel and reseeds its CRNG; returns the bits credited.
Reseeder = Callable[[bytes], int]
# Sets the system clock to an epoch time; returns whether it did.
ClockSetter = Callable[[float], bool]
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{32,512}")
MAX_ENTROPY_BYTES = 4096


class AuthMode(StrEnum):
    """How the agent decides whether a request may pass."""

    TOKEN = "token"  # noqa: S105 - a mode name, not a secret; a bearer token is required on every endpoint but /health and /init
    UNCLAIMED = "unclaimed"  # no token yet; everything but /health and /init answers 401
    INSECURE = "insecure"  # no authentication at all (--insecure-no-auth)


@dataclass(frozen=True)
class ClaimRequest:
    """A validated /init body. ``repr`` hides the token."""

    token: str
    time: float | None
    entropy: bytes | None

    def __repr__(self) -> str:
        return (
            f"ClaimRequest(token=<hidden>, time={self.time!r}, entropy={self.entropy is not None})"
        )


@dataclass(frozen=True)
class ClaimResult:
    """What /init did besides storing the token."""

    clock_set: bool
    reseeded: bool  # the kernel CRNG took a new key from the controller's entropy
    entropy_bits: int  # bits credited to the kernel's pool (0 when not reseeding)


def read_token_file(path: Path) -> str | None:
    """The token stored in ``path`` (surrounding whitespace removed), or None if absent/empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.__class__.__name__}") from exc
    return token or None


def parse_claim(body: object) -> ClaimRequest:
    """Validate a decoded /init body; InvalidInput names the offending field."""
    if not isinstance(body, dict):
        raise InvalidInput("/init body must be a JSON object")
    token = body.get("token")
    if token is None:
        raise InvalidInput("field 'token' is required")
    if not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token):
        raise InvalidInput(
            "field 'token' must be a string of 32 to 512 characters from [A-Za-z0-9_-]"
        )
    epoch = body.get("time")
    if epoch is not None and (
        isinstance(epoch, bool)
        or not isinstance(epoch, int | float)
        or not math.isfinite(epoch)
        or epoch <= 0
    ):
        raise InvalidInput("field 'time' must be a positive number of seconds since the epoch")
    entropy = body.get("entropy")
    decoded: bytes | None = None
    if entropy is not None:
        if not isinstance(entropy, str):
            raise InvalidInput("field 'entropy' must be a base64 string")
        try:
            decoded = base64.b64decode(entropy.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise InvalidInput("field 'entropy' must be a base64 string") from exc
        if len(decoded) > MAX_ENTROPY_BYTES:
            raise InvalidInput(f"field 'entropy' must decode to at most {MAX_ENTROPY_BYTES} bytes")
    return ClaimRequest(token=token, time=None if epoch is None else float(epoch), entropy=decoded)


def parse_clock(body: object) -> float:
    """The ``time`` of a validated ``POST /clock`` body (the host's clock, seconds)."""
    if not isinstance(body, dict) or set(body) != {"time"}:
        raise InvalidInput("/clock body must be a JSON object with exactly the field 'time'")
    epoch = body["time"]
    if (
        isinstance(epoch, bool)
        or not isinstance(epoch, int | float)
        or not math.isfinite(epoch)
        or epoch <= 0
    ):
        raise InvalidInput("field 'time' must be a positive number of seconds since the epoch")
    return float(epoch)


def set_system_clock(epoch: float) -> bool:
    """Set CLOCK_REALTIME; False if the agent lacks the privilege or the kernel refuses."""
    try:
        time.clock_settime(time.CLOCK_REALTIME, epoch)
    except (PermissionError, OSError, OverflowError):
        return False
    return True


class AuthGate:
    """Holds the agent's token and answers whether a request may pass; thread-safe.

    An unclaimed gate becomes a token gate exactly once, through ``claim``. It sets the clock a
    claim carries only with a ``set_clock`` (the agent's main passes ``set_system_clock`` unless
    ``--no-reseed``): an agent outside a VM must not step its host's clock.
    """

    def __init__(
        self,
        *,
        mode: AuthMode,
        token: str | None,
        token_file: Path | None,
        logger: JsonLogger,
        reseed: Reseeder | None = reseed_kernel,
        set_clock: ClockSetter | None = None,
    ) -> None:
        self._mode = mode
        self._reseed = reseed
        self._set_clock = set_clock
        self._token = token
        self._token_file = token_file
        self._logger = logger
        self._lock = threading.Lock()

    @classmethod
    def from_options(
        cls,
        *,
        token_file: Path | None,
        insecure: bool,
        allow_claim: bool,
        logger: JsonLogger,
        reseed: Reseeder | None = reseed_kernel,
        set_clock: ClockSetter | None = None,
    ) -> AuthGate:
        """Build the gate the command-line options ask for, or raise ConfigError."""
        if insecure:
            if token_file is not None or allow_claim:
                raise ConfigError(
                    "--insecure-no-auth cannot be combined with --token-file or --allow-claim"
                )
            return cls(mode=AuthMode.INSECURE, token=None, token_file=None, logger=logger)
        if token_file is None:
            raise ConfigError(
                "refusing to start without authentication: a token file is required "
                "(--token-file PATH, optionally with --allow-claim), or pass --insecure-no-auth"
            )
        token = read_token_file(token_file)
        if token is not None:
            return cls(mode=AuthMode.TOKEN, token=token, token_file=token_file, logger=logger)
        if not allow_claim:
            raise ConfigError(
                f"token file {token_file} is missing or empty; "
                "pass --allow-claim to accept a token through POST /init"
            )
        return cls(
            mode=AuthMode.UNCLAIMED,
            token=None,
            token_file=token_file,
            logger=logger,
            reseed=reseed,
            set_clock=set_clock,
        )

    @property
    def mode(self) -> AuthMode:
        """The current mode; UNCLAIMED turns into TOKEN after a successful claim."""
        with self._lock:
            return self._mode

    @property
    def claimed(self) -> bool:
        """Whether the agent holds a token."""
        return self.mode is AuthMode.TOKEN

    def authorize(self, authorization: str | None) -> None:
        """Pass silently, or raise Unauthorized/Unclaimed for the ``Authorization`` header."""
        with self._lock:
            mode, expected = self._mode, self._token
        if mode is AuthMode.INSECURE:
            return
        if mode is AuthMode.UNCLAIMED or expected is None:
            raise Unclaimed("agent is not claimed yet; POST /init with a token first")
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise Unauthorized("missing bearer token")
        if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
            raise Unauthorized("invalid bearer token")

    def ensure_claimable(self) -> None:
        """Raise AlreadyClaimed unless the agent is waiting for its token."""
        if self.mode is not AuthMode.UNCLAIMED:
            raise AlreadyClaimed(self._refusal())

    def claim(self, request: ClaimRequest) -> ClaimResult:
        """Reseed the kernel's CRNG, then store the token (once, atomically, 0600) and set the
        clock. A claim that cannot reseed stores nothing: the agent stays unclaimed."""
        with self._lock:
            if self._mode is not AuthMode.UNCLAIMED or self._token_file is None:
                raise AlreadyClaimed(self._refusal())
            if self._reseed is not None and len(request.entropy or b"") < MIN_RESEED_BYTES:
                raise InvalidInput(
                    f"field 'entropy' must carry at least {MIN_RESEED_BYTES} bytes of fresh "
                    "randomness: the claim reseeds the guest's random number generator with it"
                )
            entropy_bits = 0
            if self._reseed is not None and request.entropy is not None:
                entropy_bits = self._reseed(request.entropy)
            try:
                _create_parents(self._token_file.parent)
                atomic_write(self._token_file, (request.token + "\n").encode("ascii"))
            except OSError as exc:
                self._logger.error(
                    "token_file_write_failed", path=str(self._token_file), reason=exc.strerror
                )
                raise StorageError("could not store the token") from exc
            self._mode, self._token = AuthMode.TOKEN, request.token
        clock_set = (
            self._set_clock(request.time)
            if self._set_clock is not None and request.time is not None
            else False
        )
        result = ClaimResult(
            clock_set=clock_set, reseeded=entropy_bits > 0, entropy_bits=entropy_bits
        )
        self._logger.info(
            "claimed", clock_set=clock_set, reseeded=result.reseeded, entropy_bits=entropy_bits
        )
        return result

    def _refusal(self) -> str:
        if self._mode is AuthMode.INSECURE:
            return "agent runs without authentication (--insecure-no-auth) and cannot be claimed"
        return "agent is already claimed"


def _create_parents(directory: Path) -> None:
    """Create missing directories with mode 0700; existing ones are left as they are."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)

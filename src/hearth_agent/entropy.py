"""Clone-unique randomness: credit the host's entropy to the kernel and reseed its CRNG at once.

A VM restored from a snapshot wakes with its template's kernel CRNG state, so ``getrandom`` in
every clone returns the template's next values until the kernel reseeds by itself (up to a
minute later). Writing to ``/dev/urandom`` does not help: it mixes the bytes into the input pool
without crediting them and without a reseed. ``RNDADDENTROPY`` credits them, and
``RNDRESEEDCRNG`` makes the CRNG take a new key from the input pool right away; every reader
after that (this process, Chromium, a vendor CLI) gets values no other clone gets. Both ioctls
need CAP_SYS_ADMIN (the agent runs as root in the guest). Linux has no ``vmgenid`` driver in
Debian's cloud kernel 6.1, so this is the one mechanism that works there.
"""

from __future__ import annotations

import base64
import fcntl
import os
import random
import struct
from pathlib import Path

from hearth_agent.errors import ReseedFailed

RANDOM_DEVICE = Path("/dev/urandom")
ENTROPY_AVAIL = Path("/proc/sys/kernel/random/entropy_avail")
# <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
# At least this much host entropy per claim: the CRNG's key is 256 bits.
MIN_RESEED_BYTES = 32


def reseed_kernel(entropy: bytes, *, device: Path = RANDOM_DEVICE) -> int:
    """Credit ``entropy`` (all of it, as fresh host randomness) and reseed the CRNG; returns the
    bits credited, or raises ReseedFailed naming the step the kernel refused."""
    if len(entropy) < MIN_RESEED_BYTES:
        raise ReseedFailed(f"at least {MIN_RESEED_BYTES} bytes of entropy are needed to reseed")
    bits = len(entropy) * 8
    # struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    # A mutable buffer: ``fcntl.ioctl`` refuses an immutable one past 1024 bytes (ValueError).
    request = bytearray(struct.pack("ii", bits, len(entropy)) + entropy)
    try:
        fd = os.open(device, os.O_WRONLY)
    except OSError as exc:
        raise ReseedFailed(f"cannot open {device}: {exc.strerror}") from exc
    try:
        for name, call, argument in (
            ("RNDADDENTROPY", RNDADDENTROPY, request),
            ("RNDRESEEDCRNG", RNDRESEEDCRNG, 0),
        ):
            try:
                fcntl.ioctl(fd, call, argument)
            except OSError as exc:
                raise ReseedFailed(f"the kernel refused {name}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    # User-space state of this process drawn before the claim: Python's `random` module was
    # seeded when it was imported, in the template. Nothing security-relevant uses it, but a
    # clone should not repeat its template's sequence anywhere.
    random.seed()
    return bits


def random_sample(size: int = 32) -> dict[str, object]:
    """``size`` fresh bytes from ``getrandom`` (base64) and the kernel's entropy estimate: what
    ``GET /random`` answers, so that an operator, and the tests, can check clones apart."""
    available: int | None = None
    try:
        available = int(ENTROPY_AVAIL.read_text().strip())
    except (OSError, ValueError):
        available = None
    return {
        "getrandom": base64.b64encode(os.getrandom(size)).decode("ascii"),
        "entropy_avail": available,
    }

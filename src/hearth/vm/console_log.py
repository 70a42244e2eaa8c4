"""A VM's serial console log on the host, kept under a cap while its VMM appends to it.

A guest writes its serial console into a file on the host, as much as it likes (its user is
root in it). The VMM (QEMU with ``append=on``, Firecracker's stdout opened for appending)
writes at the file's end, so each time the VM monitor asks whether the VM runs (every second)
a log grown past ``CONSOLE_CAP_BYTES`` is cut back to its tail, the way logrotate's
``copytruncate`` does; reads take only the file's end (``hearth.tools.tail_of_file``).
"""

from __future__ import annotations

import os
from pathlib import Path

CONSOLE_CAP_BYTES = 4 << 20
CONSOLE_KEEP_BYTES = 256 << 10
CONSOLE_CUT_MARK = b"[hearth: the console log grew too long; its older lines were dropped]\n"


def cut_console(
    console: Path, *, cap: int = CONSOLE_CAP_BYTES, keep: int = CONSOLE_KEEP_BYTES
) -> bool:
    """Cut the log at ``console`` back to its last ``keep`` bytes (from a line start, after
    ``CONSOLE_CUT_MARK``) when it is longer than ``cap``; whether it did. Its VMM appends
    (``O_APPEND``), so it writes on at the new end; what it writes during the cut (microseconds)
    may be lost or land before the kept tail."""
    try:
        fd = os.open(console, os.O_RDWR | os.O_APPEND)  # never created here
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size <= cap:
            return False
        kept = os.pread(fd, keep, size - keep)
        os.ftruncate(fd, 0)
        os.write(fd, CONSOLE_CUT_MARK + kept[kept.find(b"\n") + 1 :])
        return True
    except OSError:
        return False
    finally:
        os.close(fd)

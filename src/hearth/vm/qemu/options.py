"""Values in QEMU's comma-separated option strings (``-drive``, ``-blockdev``, ``-object``,
``-qmp unix:``), where a comma ends a value unless doubled.

A host path put into one (a state dir, an image, a volume) goes through ``option_value``: a
comma in it would otherwise end the path and start a bogus option (QEMU refuses to start, or
opens another file). Arguments QEMU takes whole are not escaped: ``-serial file:``,
``-incoming unix:``, ``-kernel``, ``-initrd``, ``-pidfile``, and URIs sent over QMP.
"""

from __future__ import annotations

from pathlib import Path


def option_value(value: str | Path) -> str:
    """``value`` as a value in a QEMU option string: every comma doubled."""
    return str(value).replace(",", ",,")

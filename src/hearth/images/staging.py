"""Staged directories: build beside the target, then swap the result in whole or not at all."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(target: Path, *, prefix: str) -> Iterator[Path]:
    """A fresh directory beside ``target`` to build in.

    When the block succeeds the directory replaces ``target`` (one rename, so readers see the
    old tree or the new one, never half of it); when anything fails it is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

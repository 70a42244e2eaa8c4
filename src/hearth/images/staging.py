"""Staged directories: build beside the target, then swap the result in whole or not at all.

The swap is safe against readers, not against a second writer of the same target: image builds
sharing a cache dir therefore run one at a time (``exclusive_builds``), and the one that holds
the lock removes what a killed build left staged.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hearth.errors import BuildFailed
from hearth.images.locks import held_exclusively
from hearth.logging import get_logger

_log = get_logger("images.staging")
BUILD_LOCK_NAME = ".image-build.lock"


@contextmanager
def staged_dir(target: Path, *, prefix: str) -> Iterator[Path]:
    """A fresh directory beside ``target`` to build in (its name starts with ``prefix``, which
    starts with a dot).

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


@contextmanager
def exclusive_builds(
    cache_dir: Path, *, staging_parents: Iterable[Path], on_wait: Callable[[], None]
) -> Iterator[None]:
    """Hold the cache dir's build lock (while another build holds it: ``on_wait``, then wait),
    and first remove the dot-named directories that builds killed before their end (SIGKILL, a
    power cut) left in ``staging_parents``: no other build runs now to own them."""
    path = cache_dir / BUILD_LOCK_NAME
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = path.open("a")
    except OSError as exc:
        raise BuildFailed(
            f"cannot take the image build lock {path}: {exc.strerror}; run as root, or set "
            "HEARTH_CACHE_DIR to a directory you can write"
        ) from exc
    with lock, held_exclusively(lock.fileno(), on_wait=on_wait):
        for parent in staging_parents:
            _remove_staged(parent)
        yield


def _remove_staged(parent: Path) -> None:
    if not parent.is_dir():
        return
    for leftover in parent.glob(".*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
            _log.info("abandoned_build_removed", path=str(leftover))

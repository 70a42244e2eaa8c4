"""The sealed saved-state file: what goes in comes out, and every way of spoiling it is refused
by name before a byte of it could reach a guest as memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hearth.errors import SavedStateCorrupt
from hearth.vm.qemu.saved_state import (
    CHUNK_BYTES,
    MAGIC,
    StateWriter,
    new_state_key,
    read_state,
)

STREAM = os.urandom(CHUNK_BYTES * 2 + 12345)


def _saved(tmp_path: Path, key: bytes, data: bytes = STREAM) -> Path:
    path = tmp_path / "state.enc"
    writer = StateWriter(path, key)
    for start in range(0, len(data), 70000):  # QEMU's writes come in odd sizes
        writer.write(data[start : start + 70000])
    writer.finish()
    return path


def test_a_stream_comes_back_whole_and_is_never_in_clear(tmp_path: Path) -> None:
    key = new_state_key()
    path = _saved(tmp_path, key)
    assert b"".join(read_state(path, key)) == STREAM
    assert STREAM[:64] not in path.read_bytes()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not (tmp_path / "state.enc.partial").exists()


def test_an_empty_stream_round_trips(tmp_path: Path) -> None:
    key = new_state_key()
    assert b"".join(read_state(_saved(tmp_path, key, b""), key)) == b""


def test_an_aborted_save_leaves_no_file(tmp_path: Path) -> None:
    writer = StateWriter(tmp_path / "state.enc", new_state_key())
    writer.write(b"x" * 100)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def _spoil(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    first = len(MAGIC) + 4  # the first chunk's sealed bytes
    if how == "flipped":
        data[first + 100] ^= 0x01
    elif how == "cut":
        del data[-10:]
    elif how == "final_dropped":
        del data[-(4 + 16) :]
    elif how == "appended":
        data += b"more"
    elif how == "magic":
        data[0] ^= 0xFF
    elif how == "swapped":
        size = 4 + CHUNK_BYTES + 16
        one, two = (
            data[len(MAGIC) : len(MAGIC) + size],
            data[len(MAGIC) + size : len(MAGIC) + 2 * size],
        )
        data[len(MAGIC) : len(MAGIC) + 2 * size] = two + one
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("flipped", "chunk 0 does not authenticate"),
        ("cut", "cut short"),
        ("final_dropped", "cut short: it ends before chunk 3"),
        ("appended", "data after its final chunk"),
        ("magic", "not a saved state"),
        ("swapped", "chunk 0 does not authenticate"),
    ],
)
def test_a_spoiled_file_is_refused_by_name(tmp_path: Path, how: str, says: str) -> None:
    key = new_state_key()
    path = _saved(tmp_path, key)
    _spoil(path, how)
    with pytest.raises(SavedStateCorrupt, match=says):
        b"".join(read_state(path, key))


def test_another_key_or_no_file_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path, new_state_key())
    with pytest.raises(SavedStateCorrupt, match="sealed under another key"):
        b"".join(read_state(path, new_state_key()))
    with pytest.raises(SavedStateCorrupt, match="is missing"):
        b"".join(read_state(tmp_path / "nothing.enc", new_state_key()))

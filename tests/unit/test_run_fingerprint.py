"""A text's fingerprint: extended piece by piece it is the whole text's, and it tells whether a
text begins with the fingerprinted one as ``str.startswith`` does."""

from __future__ import annotations

import itertools
import json

import pytest

from hearth.runs.fingerprint import _PRIME, Fingerprint

PIECES = ["", "a", "\x00", "\x00\x00b", "é", "日本語", "🙂", "\ud800", "\udfff x", "line\n"]


def test_a_fingerprint_extended_piece_by_piece_is_the_whole_texts() -> None:
    for pieces in itertools.product(PIECES, repeat=3):
        grown = Fingerprint()
        for piece in pieces:
            grown = grown.extended(piece)
        assert grown == Fingerprint.of("".join(pieces))


def test_begins_says_what_startswith_says() -> None:
    texts = ["".join(pieces) for pieces in itertools.product(PIECES, repeat=2)]
    for said in texts:
        for whole in texts:
            assert Fingerprint.of(said).begins(whole) is whole.startswith(said), (said, whole)


def test_two_bytes_swapped_a_fixed_distance_apart_change_the_fingerprint() -> None:
    # With a modulus of a short form (2**127 - 1) these two texts had one fingerprint.
    text = "".join(chr(ord("a") + i % 26) for i in range(400))
    for distance in (127, 128, 255, 256):
        swapped = list(text)
        swapped[10], swapped[10 + distance] = swapped[10 + distance], swapped[10]
        assert Fingerprint.of(text) != Fingerprint.of("".join(swapped))


def test_the_modulus_is_prime() -> None:
    d, s = _PRIME - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for base in range(2, 42):  # Miller-Rabin
        x = pow(base, d, _PRIME)
        if x in (1, _PRIME - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, _PRIME)
            if x == _PRIME - 1:
                break
        else:
            pytest.fail(f"{base} witnesses that the modulus is composite")


def test_its_data_reads_back_and_nothing_else_does() -> None:
    said = Fingerprint.of("Hello, world")
    assert Fingerprint.of_data(*json.loads(json.dumps(said.data()))) == said
    for length, value in ((-1, "0"), (3, format(_PRIME, "x")), (3, "zz"), ("3", "0"), (3, 7)):
        with pytest.raises((TypeError, ValueError)):
            Fingerprint.of_data(length, value)

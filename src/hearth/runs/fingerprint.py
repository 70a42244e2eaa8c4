"""A text's fingerprint, extended as the text grows: does a later text begin with that text?

Claude streams a content block's text in deltas, then sends the block whole; the parser passes on
only what the deltas did not say, so it needs to know whether the whole begins with them. Its
checkpoint is stored with every exec event: keeping the deltas' text there made the store writes
of an answer grow with its square. A ``Fingerprint`` is the text's length and one number.

The number is the text's UTF-8 bytes read as one big-endian integer, modulo a 128-bit prime.
That of ``a + b`` follows from that of ``a`` and the bytes of ``b`` (times ``256**len(b)``,
plus ``b``), which a digest such as SHA-256 cannot do once reduced to its hex digest, and which
``int.from_bytes`` and ``pow`` compute in C. Two texts of one length share it only when their
difference is a multiple of the prime: about 2**-128 for texts not crafted to (the model's own
text, which can say anything anyway). The prime has no short form, unlike ``2**127 - 1``, with
which two bytes swapped 127 bytes apart keep the fingerprint: it is the first prime above the
first 16 bytes of SHA-256("hearth.runs.textprint") with the top bit set.
"""

from __future__ import annotations

from dataclasses import dataclass

_PRIME = 0x825C1C5A1542ECAE907EC483F041146D


@dataclass(frozen=True)
class Fingerprint:
    """A text's length in characters and its number; ``Fingerprint()`` is the empty text's."""

    length: int = 0
    value: int = 0

    @classmethod
    def of(cls, text: str) -> Fingerprint:
        """The fingerprint of ``text``."""
        return cls().extended(text)

    def extended(self, text: str) -> Fingerprint:
        """The fingerprint of this text followed by ``text``."""
        data = text.encode("utf-8", errors="surrogatepass")
        value = self.value * pow(256, len(data), _PRIME) + int.from_bytes(data, "big")
        return Fingerprint(self.length + len(text), value % _PRIME)

    def begins(self, text: str) -> bool:
        """Whether ``text`` begins with the text this is the fingerprint of."""
        return len(text) >= self.length and Fingerprint.of(text[: self.length]) == self

    def data(self) -> list[int | str]:
        """As JSON data: the length and the number in hex (``of_data`` reads it back)."""
        return [self.length, format(self.value, "032x")]

    @classmethod
    def of_data(cls, length: object, value: object) -> Fingerprint:
        """The fingerprint whose ``data()`` was ``[length, value]`` (TypeError or ValueError for
        what no fingerprint gives)."""
        if not isinstance(length, int) or not isinstance(value, str):
            raise TypeError("a fingerprint is a length and a hex number")
        number = int(value, 16)
        if length < 0 or not 0 <= number < _PRIME:
            raise ValueError("a fingerprint out of range")
        return cls(length, number)

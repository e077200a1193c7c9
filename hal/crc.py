"""Sensirion's CRC-8: polynomial 0x31 (x^8 + x^5 + x^4 + 1), init 0xFF, no reflection,
no final XOR, computed over each 16-bit word. The datasheets' check value:
``crc8(b"\\xbe\\xef") == 0x92``.
"""

from __future__ import annotations

from hal.exc import CRCError

POLYNOMIAL = 0x31
INIT = 0xFF


def crc8(data: bytes) -> int:
    """Return the Sensirion CRC-8 of ``data``."""
    crc = INIT
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ POLYNOMIAL) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def words_with_crc(sensor: str, data: bytes) -> list[int]:
    """Split ``data`` (word, CRC, word, CRC, ...) into checked 16-bit words.

    Raises :class:`hal.exc.CRCError` on the first word whose CRC does not match.
    """
    if len(data) % 3:
        raise ValueError(f"expected a multiple of 3 bytes, got {len(data)}")
    words = []
    for i in range(0, len(data), 3):
        word, received = data[i : i + 2], data[i + 2]
        expected = crc8(word)
        if expected != received:
            raise CRCError(sensor, bytes(word), expected, received)
        words.append(int.from_bytes(word, "big"))
    return words


def pack_words(words: list[int]) -> bytes:
    """The inverse of :func:`words_with_crc`: each word big-endian, followed by its CRC."""
    out = bytearray()
    for word in words:
        raw = (word & 0xFFFF).to_bytes(2, "big")
        out += raw
        out.append(crc8(raw))
    return bytes(out)

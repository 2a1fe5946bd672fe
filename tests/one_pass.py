"""Checks shared by the tests of the one-pass call readers (``wire.sends``, ``wire.pulls``): on any
bytes, a reader returns None (the call goes to thriftpy2) or exactly what thriftpy2 reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from hypothesis import strategies as st

Read = Callable[[bytes], "tuple[object, ...] | None"]

# Byte values worth trying at every position: type ids, small lengths and sign bits.
BYTE_VALUES = frozenset({0, 1, 2, 3, 4, 5, 8, 10, 11, 12, 15, 0x7F, 0x80, 0xFF})


def read_as_general(read: Read, decoded: Read, payload: bytes, note: object = None) -> tuple[object, ...] | None:
    """``read(payload)``, checked against the general way when it is not None."""
    got = read(payload)
    if got is not None:
        assert got == decoded(payload), note
    return got


def mutated(data: st.DataObject, payload: bytes, body: int) -> bytes:
    """``payload`` with one to four bytes after ``body`` changed, then perhaps cut short."""
    changed = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        changed[data.draw(st.integers(body, len(changed) - 1))] = data.draw(st.integers(0, 255))
    return bytes(changed[: data.draw(st.integers(body, len(changed)))])


def single_byte_changes(payload: bytes, body: int) -> Iterator[tuple[int, int, bytes]]:
    """Every position after ``body`` set to each of BYTE_VALUES and to its value with the low bit
    flipped: ``(pos, value, changed payload)``."""
    for pos in range(body, len(payload)):
        for value in BYTE_VALUES | {payload[pos] ^ 1}:
            yield pos, value, payload[:pos] + bytes((value,)) + payload[pos + 1 :]

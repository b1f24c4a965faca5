"""A small binary encoding for share tree objects: unsigned and signed varints, byte strings.

Owns `Writer` (appends to a bytearray) and `Reader` (bounds-checked reads that raise
`Malformed` instead of IndexError, struct.error or a huge allocation). Objects come from
the network: even authenticated ones are parsed defensively, so a hostile publisher gets
one clear error, never a crash.
"""

from __future__ import annotations


class Malformed(ValueError):
    """The bytes do not follow the format (truncated, overlong, out of range)."""


_MAX_VARINT_BYTES = 10  # 64 bits


class Writer:
    __slots__ = ("out",)

    def __init__(self) -> None:
        self.out = bytearray()

    def uint(self, value: int) -> None:
        if value < 0:
            raise ValueError("uint must not be negative")
        while value >= 0x80:
            self.out.append((value & 0x7F) | 0x80)
            value >>= 7
        self.out.append(value)

    def sint(self, value: int) -> None:
        # zigzag: small magnitudes of either sign stay short
        self.uint(value * 2 if value >= 0 else -value * 2 - 1)

    def raw(self, data: bytes) -> None:
        self.out += data

    def bytes(self, data: bytes) -> None:
        self.uint(len(data))
        self.out += data

    def getvalue(self) -> bytes:
        return bytes(self.out)


class Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def uint(self) -> int:
        value = shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            if self.pos >= len(self.data):
                raise Malformed("truncated number")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise Malformed("number too long")

    def sint(self) -> int:
        value = self.uint()
        return value // 2 if not value & 1 else -(value + 1) // 2

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise Malformed("truncated data")
        out = self.data[self.pos:self.pos + n].tobytes()
        self.pos += n
        return out

    def bytes(self, limit: int = 1 << 20) -> bytes:
        n = self.uint()
        if n > limit:
            raise Malformed(f"a field of {n} bytes (at most {limit} expected)")
        return self.raw(n)

    def count(self, limit: int) -> int:
        """A number of items to follow, bounded (so a forged count cannot make us loop or allocate)."""
        n = self.uint()
        if n > limit:
            raise Malformed(f"{n} items (at most {limit} expected)")
        return n

    def u8(self) -> int:
        return self.raw(1)[0]

    def done(self) -> None:
        if self.pos != len(self.data):
            raise Malformed(f"{len(self.data) - self.pos} bytes left over")

"""The kernel's references to inodes: lookup counts and packing groups, kept small.

The kernel holds a reference on every inode it was told about (lookup, create, link, and
each entry of a readdirplus listing: pyfuse3 always lists with attributes) until it
evicts the inode, which it does only under memory pressure. After `find` over a volume of
3.3M entries on a machine with free memory it holds all of them, and the mount must count
each one until the matching forget. A `Node` per inode (its cached row and handles) cost
~600 bytes, 2 GB at that size; a dict entry per inode still ~80 (measured with
benchmarks/bench_scale.py). Inode ids are never reused and are handed out in small
per-directory blocks from one growing counter (docs/index.md, "Inode ids"), so they are
dense enough for flat arrays: blocks of 256 consecutive ids, each an array of counts and
an array of packing groups (the directory a file was last seen in), 16 bytes an id. A
block is made when the kernel first holds one of its ids and freed when it holds none, so
the cost is at most 16 bytes times the highest id held (the ids directories reserved but
never used included), and a few KB per block for scattered ones.
"""

from __future__ import annotations

from array import array

_BITS = 8
_BLOCK = 1 << _BITS
_MASK = _BLOCK - 1
_ZEROS = array("Q", [0]) * _BLOCK


class KernelRefs:
    __slots__ = ("_blocks", "_held")

    def __init__(self) -> None:
        # ino >> _BITS -> [counts, groups, inodes held in the block]
        self._blocks: dict[int, list] = {}
        self._held = 0

    def add(self, ino: int, group: int) -> None:
        """One more reference to `ino`; `group` becomes its packing group."""
        block = self._blocks.get(ino >> _BITS)
        if block is None:
            block = self._blocks[ino >> _BITS] = [array("Q", _ZEROS), array("Q", _ZEROS), 0]
        i = ino & _MASK
        counts = block[0]
        if not counts[i]:
            block[2] += 1
            self._held += 1
        counts[i] += 1
        block[1][i] = group

    def drop(self, ino: int, count: int) -> int:
        """`count` references fewer (never below zero); returns the count left."""
        block = self._blocks.get(ino >> _BITS)
        i = ino & _MASK
        if block is None or not block[0][i]:
            return 0
        left = block[0][i] - count
        if left > 0:
            block[0][i] = left
            return left
        block[0][i] = block[1][i] = 0
        block[2] -= 1
        self._held -= 1
        if not block[2]:
            del self._blocks[ino >> _BITS]
        return 0

    def count(self, ino: int) -> int:
        block = self._blocks.get(ino >> _BITS)
        return 0 if block is None else block[0][ino & _MASK]

    def group(self, ino: int) -> int | None:
        block = self._blocks.get(ino >> _BITS)
        if block is None or not block[0][ino & _MASK]:
            return None
        return block[1][ino & _MASK]

    def regroup(self, ino: int, group: int) -> None:
        """A referenced file moved (rename): it packs with `group` now."""
        block = self._blocks.get(ino >> _BITS)
        if block is not None and block[0][ino & _MASK]:
            block[1][ino & _MASK] = group

    def nbytes(self) -> int:
        """Bytes held by the arrays (what grows with the number of inodes held)."""
        return len(self._blocks) * 2 * _ZEROS.itemsize * _BLOCK

    def clear(self) -> None:
        self._blocks.clear()
        self._held = 0

    def __contains__(self, ino: int) -> bool:
        return bool(self.count(ino))

    def __len__(self) -> int:
        return self._held

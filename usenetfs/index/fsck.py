"""Offline consistency check and repair of an index (`Index.fsck`).

Owns the checks and their repairs. fsck runs with nothing mounted: full scans are fine,
but it streams big tables (merge joins on sorted cursors) instead of loading them, so it
stays within memory at 30M segments. Only directories (300K at full size) are held in dicts.

It never trusts a stored derived value: nlink, the directory parent, refcounts, segment
death and the counters are all recomputed from the primary facts (dentries, extents,
segment rows) and compared. Repairs run in one transaction, in this order, each step
working on what the previous ones left:

 1. root inode and volume scope exist
 2. directory entries: dangling inode, parent missing or not a directory, root named,
    duplicate cookies, directories with several names
 3. directory tree: cycles are cut by moving one member into /lost+found
 4. inodes without a name: nlink 0 -> orphan (unlinked while open at a crash), deleted;
    nlink > 0 (or a directory with children) -> lost, linked into /lost+found as "#<ino>"
 5. nlink and directory parent recount
 6. symlink targets, xattrs and extents of missing inodes; malformed, overlapping and
    beyond-EOF extents (a later extent wins an overlap)
 7. extents referencing segments that do not exist (dropped: the bytes read as a hole)
 8. refcounts recounted from extents; unreferenced segments die, referenced dead ones
    come back (posted -> re-verified, never posted -> pending again)
 9. inode id blocks of directories: malformed, on a non-directory, overlapping another
    block or holding an id in use -> dropped (the directory takes a new block)
10. statfs counters and id allocators against a full recount
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from . import layout
from .layout import ExtentRow
from .schema import (
    COUNTER_NAMES,
    DEAD,
    MISSING,
    PENDING,
    POSTED,
    ROOT_INODE,
    S_IFDIR,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    STATE_NAMES,
    VERIFIED,
    VOLUME_SCOPE,
)

if TYPE_CHECKING:
    from .store import Index

_DIR = f"(i.mode & {S_IFMT}) = {S_IFDIR}"
_LOST_FOUND = b"lost+found"


class _Fsck:
    def __init__(self, ix: Index, repair: bool) -> None:
        self.ix = ix
        self.repair = repair
        self.problems: list[str] = []
        self.q = ix._q
        self._lost_found: int | None = None

    def report(self, message: str) -> None:
        self.problems.append(message)

    def w(self, sql: str, params=()) -> None:
        self.ix._w(sql, params)

    def wmany(self, sql: str, params) -> None:
        params = list(params)
        if params:
            self.ix._wmany(sql, params)

    # -------------------------------------------------------------- helpers

    def lost_found(self) -> int:
        if self._lost_found is None:
            row = self.ix.lookup_entry(ROOT_INODE, _LOST_FOUND)
            if row is not None and row.is_dir:
                self._lost_found = row.id
            else:
                name = _LOST_FOUND
                while self.ix.lookup(ROOT_INODE, name) is not None:
                    name += b"_"
                self._lost_found = self.ix.make_node(ROOT_INODE, name, S_IFDIR | 0o700, 0, 0).id
        return self._lost_found

    def lost_name(self, ino: int) -> bytes:
        lf = self.lost_found()
        name = b"#%d" % ino
        while self.ix.lookup(lf, name) is not None:
            name += b"_"
        return name

    def dir_entries(self) -> tuple[dict[int, tuple[int, bytes]], dict[int, list[int]]]:
        """Directory -> (parent, name) of its first entry; parent -> subdirectories."""
        entry: dict[int, tuple[int, bytes]] = {}
        children: dict[int, list[int]] = defaultdict(list)
        for parent, name, ino in self.q(
            f"SELECT d.parent, d.name, d.inode FROM dentries d JOIN inodes i ON i.id = d.inode "
            f"WHERE {_DIR} ORDER BY d.id"
        ):
            if ino not in entry:
                entry[ino] = (parent, name)
                children[parent].append(ino)
        return entry, children

    # -------------------------------------------------------------- 1. root and scope

    def root(self) -> None:
        row = self.q("SELECT mode FROM inodes WHERE id = ?", (ROOT_INODE,)).fetchone()
        if row is None:
            self.report("the root inode is missing")
            if self.repair:
                now = self.ix._now(None)
                self.w(
                    "INSERT INTO inodes (id, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, generation, "
                    "rdev, parent) VALUES (?, ?, 0, 0, 0, ?, ?, ?, 2, 0, 0, ?)",
                    (ROOT_INODE, S_IFDIR | 0o755, now, now, now, ROOT_INODE),
                )
        elif row[0] & S_IFMT != S_IFDIR:
            self.report("the root inode is not a directory")
            if self.repair:
                self.w("UPDATE inodes SET mode = ? WHERE id = ?", (S_IFDIR | 0o755, ROOT_INODE))
        scope = self.q("SELECT root_inode, kind FROM scopes WHERE id = ?", (VOLUME_SCOPE,)).fetchone()
        if scope is None or scope != (ROOT_INODE, "volume"):
            # Unrepairable here: the volume id names every article already posted.
            self.report(f"the volume scope row is missing or wrong: {scope}")

    # -------------------------------------------------------------- 2. directory entries

    def dentries(self) -> None:
        bad = self.q(
            "SELECT d.parent, d.name, d.inode FROM dentries d LEFT JOIN inodes i ON i.id = d.inode "
            "WHERE i.id IS NULL"
        ).fetchall()
        for parent, name, ino in bad:
            self.report(f"entry {name!r} in directory {parent} points to missing inode {ino}")
        bad2 = self.q(
            f"SELECT d.parent, d.name FROM dentries d LEFT JOIN inodes i ON i.id = d.parent "
            f"WHERE i.id IS NULL OR NOT {_DIR}"
        ).fetchall()
        for parent, name in bad2:
            self.report(f"entry {name!r} is in {parent}, which is missing or not a directory")
        bad3 = self.q("SELECT parent, name FROM dentries WHERE inode = ?", (ROOT_INODE,)).fetchall()
        for parent, name in bad3:
            self.report(f"entry {name!r} in directory {parent} names the root")
        if self.repair:
            self.wmany(
                "DELETE FROM dentries WHERE parent = ? AND name = ?", [(p, n) for p, n, *_ in bad + bad2 + bad3]
            )
        dups = self.q("SELECT id FROM dentries GROUP BY id HAVING count(*) > 1").fetchall()
        for (dentry_id,) in dups:
            self.report(f"readdir cookie {dentry_id} is used by several entries")
            if self.repair:
                rows = self.q("SELECT parent, name FROM dentries WHERE id = ?", (dentry_id,)).fetchall()
                for parent, name in rows[1:]:
                    new_id = max(self.ix._c["next_dentry"], self._max_dentry() + 1)
                    self.w("UPDATE dentries SET id = ? WHERE parent = ? AND name = ?", (new_id, parent, name))
                    self.ix._c["next_dentry"] = new_id + 1
        multi = self.q(
            f"SELECT d.inode FROM dentries d JOIN inodes i ON i.id = d.inode WHERE {_DIR} "
            f"GROUP BY d.inode HAVING count(*) > 1"
        ).fetchall()
        for (ino,) in multi:
            self.report(f"directory {ino} has several names")
            if self.repair:
                rows = self.q("SELECT parent, name FROM dentries WHERE inode = ? ORDER BY id", (ino,)).fetchall()
                self.wmany("DELETE FROM dentries WHERE parent = ? AND name = ?", rows[1:])

    def _max_dentry(self) -> int:
        return self.q("SELECT coalesce(max(id), 0) FROM dentries").fetchone()[0]

    # -------------------------------------------------------------- 3. directory tree

    def tree(self) -> None:
        entry, children = self.dir_entries()
        reached: set[int] = set()

        def mark(top: int) -> None:
            stack = [top]
            while stack:
                d = stack.pop()
                if d not in reached:
                    reached.add(d)
                    stack.extend(children.get(d, ()))

        mark(ROOT_INODE)
        for u in sorted(entry):
            if u in reached:
                continue
            walk: set[int] = set()
            x = u
            while x in entry and x not in walk and x not in reached:
                walk.add(x)
                x = entry[x][0]
            if x in walk:
                parent, name = entry[x]
                self.report(f"directory {x} ({name!r} in {parent}) is part of a directory cycle")
                if self.repair:
                    lf = self.lost_found()
                    self.ix.rename(parent, name, lf, self.lost_name(x))
                    mark(lf)
            # else: the chain ends at a directory with no name: step 4 relinks it.
            mark(x)

    # -------------------------------------------------------------- 4. nameless inodes

    def nameless(self) -> None:
        names = self.q("SELECT inode, count(*) FROM dentries GROUP BY inode ORDER BY inode")
        found: list[tuple[int, int, int]] = []
        nxt = next(names, None)
        for ino, mode, nlink in self.q("SELECT id, mode, nlink FROM inodes ORDER BY id"):
            while nxt is not None and nxt[0] < ino:
                nxt = next(names, None)
            if ino != ROOT_INODE and (nxt is None or nxt[0] != ino):
                found.append((ino, mode, nlink))
        names.close()
        for ino, mode, nlink in found:
            is_dir = mode & S_IFMT == S_IFDIR
            has_children = is_dir and self.q("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (ino,)).fetchone()
            if nlink == 0 and not has_children:
                self.report(f"inode {ino} is orphaned (nlink 0, no name)")
                if self.repair:
                    for table in ("extents", "xattrs", "symlinks"):
                        self.w(f"DELETE FROM {table} WHERE inode = ?", (ino,))
                    self.w("DELETE FROM inodes WHERE id = ?", (ino,))
            else:
                self.report(f"inode {ino} has nlink {nlink} but no name")
                if self.repair:
                    if is_dir:
                        self.w("UPDATE inodes SET parent = NULL, nlink = 1 WHERE id = ?", (ino,))
                    self.ix.link(self.lost_found(), self.lost_name(ino), ino)

    # -------------------------------------------------------------- 5. nlink and parent

    def nlinks(self) -> None:
        entry, children = self.dir_entries()
        names = self.q("SELECT inode, count(*) FROM dentries GROUP BY inode ORDER BY inode")
        nxt = next(names, None)
        fixes = []
        for ino, mode, nlink, parent in self.q("SELECT id, mode, nlink, parent FROM inodes ORDER BY id"):
            while nxt is not None and nxt[0] < ino:
                nxt = next(names, None)
            count = nxt[1] if nxt is not None and nxt[0] == ino else 0
            if mode & S_IFMT == S_IFDIR:
                if ino == ROOT_INODE:
                    true_nlink, true_parent = 2 + len(children.get(ino, ())), ROOT_INODE
                elif ino in entry:
                    true_nlink, true_parent = 2 + len(children.get(ino, ())), entry[ino][0]
                else:
                    true_nlink, true_parent = 0, None
            else:
                true_nlink, true_parent = count, None
            if (nlink, parent) != (true_nlink, true_parent):
                self.report(f"inode {ino}: nlink {nlink}, parent {parent}; should be {true_nlink}, {true_parent}")
                fixes.append((true_nlink, true_parent, ino))
        names.close()
        if self.repair:
            self.wmany("UPDATE inodes SET nlink = ?, parent = ? WHERE id = ?", fixes)

    # -------------------------------------------------------------- 6. per-inode data

    def inode_data(self) -> None:
        for table in ("symlinks", "xattrs"):
            stray = self.q(
                f"SELECT DISTINCT t.inode FROM {table} t LEFT JOIN inodes i ON i.id = t.inode WHERE i.id IS NULL"
            ).fetchall()
            for (ino,) in stray:
                self.report(f"{table} rows of missing inode {ino}")
            if self.repair:
                self.wmany(f"DELETE FROM {table} WHERE inode = ?", stray)
        wrong = self.q(
            f"SELECT s.inode FROM symlinks s JOIN inodes i ON i.id = s.inode WHERE (i.mode & {S_IFMT}) != {S_IFLNK}"
        ).fetchall()
        for (ino,) in wrong:
            self.report(f"inode {ino} has a symlink target but is not a symlink")
        if self.repair:
            self.wmany("DELETE FROM symlinks WHERE inode = ?", wrong)
        for ino, size, target_len in self.q(
            f"SELECT i.id, i.size, length(s.target) FROM inodes i LEFT JOIN symlinks s ON s.inode = i.id "
            f"WHERE (i.mode & {S_IFMT}) = {S_IFLNK}"
        ).fetchall():
            if target_len is None:
                self.report(f"symlink {ino} has no target")
                if self.repair:
                    self.w("INSERT INTO symlinks (inode, target) VALUES (?, ?)", (ino, b""))
                    target_len = 0
            if target_len is not None and size != target_len:
                self.report(f"symlink {ino} has size {size}, its target {target_len} bytes")
                if self.repair:
                    self.w("UPDATE inodes SET size = ? WHERE id = ?", (target_len, ino))
        self.extents()

    def extents(self) -> None:
        deletes: list[tuple[int, int]] = []
        inserts: list[ExtentRow] = []
        group: list[tuple[ExtentRow, int | None, int | None]] = []

        def flush() -> None:
            if group:
                self._fix_file(group, deletes, inserts)
                group.clear()

        for r in self.q(
            "SELECT e.inode, e.offset, e.length, e.segment, e.segment_offset, e.run, e.stride, i.mode, i.size "
            "FROM extents e LEFT JOIN inodes i ON i.id = e.inode ORDER BY e.inode, e.offset"
        ):
            if group and group[0][0].inode != r[0]:
                flush()
            group.append((ExtentRow._make(r[:7]), r[7], r[8]))
        flush()
        if self.repair:
            self.wmany("DELETE FROM extents WHERE inode = ? AND offset = ?", deletes)
            self.wmany(
                "INSERT INTO extents (inode, offset, length, segment, segment_offset, run, stride) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )

    def _fix_file(self, group, deletes: list, inserts: list) -> None:
        ino, mode, size = group[0][0].inode, group[0][1], group[0][2]
        original = [row for row, _, _ in group]
        if mode is None or mode & S_IFMT != S_IFREG:
            self.report(f"extents of inode {ino}, which is {'missing' if mode is None else 'not a regular file'}")
            deletes.extend((r.inode, r.offset) for r in original)
            return
        fixed: list[ExtentRow] = []
        for row in original:
            try:
                layout.check(row)
                fixed.append(row)
            except ValueError as e:
                try:
                    norm = layout.normalised(row)
                except ValueError:
                    self.report(f"inode {ino}: unusable extent dropped: {e}")
                    continue
                self.report(f"inode {ino}: malformed extent normalised: {e}")
                fixed.append(norm)
        for i in range(len(fixed) - 1):
            row, nxt = fixed[i], fixed[i + 1]
            if row.end > nxt.offset:
                self.report(f"inode {ino}: extents at {row.offset} and {nxt.offset} overlap")
                fixed[i] = row.piece(row.offset, nxt.offset)
        if fixed and fixed[-1].end > size:
            self.report(f"inode {ino}: extents reach {fixed[-1].end}, beyond the size {size}")
            fixed = layout.truncated(fixed, size)
        keep = set(original) & set(fixed)
        deletes.extend((r.inode, r.offset) for r in original if r not in keep)
        inserts.extend(r for r in fixed if r not in keep)

    # -------------------------------------------------------------- 7. missing segments

    def missing_segments(self) -> None:
        bad = self.q(
            "SELECT e.inode, e.offset, e.segment, e.run FROM extents e "
            "WHERE (SELECT count(*) FROM segments s WHERE s.id BETWEEN e.segment AND e.segment + e.run - 1) != e.run"
        ).fetchall()
        for ino, offset, segment, run in bad:
            self.report(
                f"inode {ino}: extent at {offset} references missing segments in {segment}..{segment + run - 1}"
            )
        if self.repair:
            self.wmany("DELETE FROM extents WHERE inode = ? AND offset = ?", [(b[0], b[1]) for b in bad])

    # -------------------------------------------------------------- 8. refcounts and states

    def refcounts(self) -> None:
        # Each extent adds 1 on [segment, segment + run): as events (+1 at the start, -1
        # one past the end), summed per id and sorted by SQLite, then swept alongside the
        # segments in id order: O(1) memory in Python.
        events = self.q(
            "SELECT seg, sum(d) FROM (SELECT segment AS seg, 1 AS d FROM extents "
            "UNION ALL SELECT segment + run, -1 FROM extents) GROUP BY seg ORDER BY seg"
        )
        nxt = next(events, None)
        level = 0
        fixes: list[tuple[int, int, int]] = []  # (refcount, state, id)
        known_scopes = set(self.ix._scopes)
        for seg, refcount, state, stored, scope in self.q(
            "SELECT id, refcount, state, stored_extra, scope FROM segments ORDER BY id"
        ):
            while nxt is not None and nxt[0] <= seg:
                level += nxt[1]
                nxt = next(events, None)
            new_state = state
            if state not in (PENDING, POSTED, VERIFIED, MISSING, DEAD):
                self.report(f"segment {seg} has unknown state {state}")
                new_state = MISSING if level else DEAD
            elif level == 0 and state != DEAD:
                if state == PENDING:
                    self.report(f"pending segment {seg} has no extents")
                else:
                    self.report(f"segment {seg} is {STATE_NAMES[state]} but no extent references it")
                new_state = DEAD
            elif level > 0 and state == DEAD:
                self.report(f"dead segment {seg} is referenced by {level} extent(s)")
                new_state = POSTED if stored is not None else PENDING
            if refcount != level:
                self.report(f"segment {seg}: refcount {refcount}, referenced by {level} extent(s)")
            if scope not in known_scopes:
                self.report(f"segment {seg} belongs to unknown scope {scope}")
            if (refcount, new_state) != (level, state):
                fixes.append((level, new_state, seg))
        events.close()
        if self.repair:
            self.wmany("UPDATE segments SET refcount = ?, state = ? WHERE id = ?", fixes)

    # -------------------------------------------------------------- 9. inode id blocks

    def id_blocks(self) -> None:
        """A directory's block [alloc_next, alloc_end) must be ids nobody has: a new entry
        takes alloc_next as its inode id. Dropping a block is always safe."""
        blocks = []
        bad = []
        for ino, mode, lo, hi in self.q(
            "SELECT id, mode, alloc_next, alloc_end FROM inodes WHERE alloc_next IS NOT NULL OR alloc_end IS NOT NULL"
        ):
            if (mode & S_IFMT) != S_IFDIR or lo is None or hi is None or lo > hi:
                self.report(f"inode {ino}: malformed inode id block [{lo}, {hi})")
                bad.append(ino)
            elif lo < hi:
                blocks.append((lo, hi, ino))
        blocks.sort()
        end = 0
        for lo, hi, ino in blocks:
            if lo < end:
                self.report(f"directory {ino}: inode id block [{lo}, {hi}) overlaps another")
                bad.append(ino)
                continue
            end = hi
            used = self.q("SELECT id FROM inodes WHERE id >= ? AND id < ? LIMIT 1", (lo, hi)).fetchone()
            if used is not None:
                self.report(f"directory {ino}: inode id block [{lo}, {hi}) holds inode {used[0]}")
                bad.append(ino)
        if self.repair:
            self.wmany("UPDATE inodes SET alloc_next = NULL, alloc_end = NULL WHERE id = ?", [(i,) for i in bad])

    # -------------------------------------------------------------- 10. counters

    def counters(self) -> None:
        truth = dict.fromkeys(COUNTER_NAMES, 0)
        truth["inodes"], truth["total_bytes"], max_inode = self.q(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(id), 0) FROM inodes"
        ).fetchone()
        names = ("seg_pending", "seg_posted", "seg_verified", "seg_missing", "seg_dead")
        for state, n, stored in self.q(
            "SELECT state, count(*), coalesce(sum(coalesce(payload_size, ?) + stored_extra), 0) FROM segments "
            "GROUP BY state",
            (self.ix.segment_size,),
        ):
            if 0 <= state < len(names):
                truth[names[state]] = n
            truth["garbage_bytes" if state == DEAD else "stored_bytes"] += stored
        max_segment = self.q("SELECT coalesce(max(id), 0) FROM segments").fetchone()[0]
        max_block_end = self.q("SELECT coalesce(max(alloc_end), 0) FROM inodes").fetchone()[0]
        row = self.q(f"SELECT {', '.join(COUNTER_NAMES)} FROM counters WHERE id = 1").fetchone()
        stored = dict(zip(COUNTER_NAMES, row))
        # Allocators must stay ahead of every id ever used (ids are never reused: a
        # segment id names articles already on the server); only "behind" is wrong.
        # Directories' blocks of ids (step 9) are ahead of it too.
        truth["next_inode"] = max(stored["next_inode"], max_inode + 1, max_block_end)
        truth["next_segment"] = max(stored["next_segment"], max_segment + 1)
        truth["next_dentry"] = max(stored["next_dentry"], self._max_dentry() + 1)
        for name in COUNTER_NAMES:
            if stored[name] != truth[name] or self.ix._c[name] != truth[name]:
                self.report(f"counter {name} is {stored[name]} (in memory {self.ix._c[name]}), truth {truth[name]}")
        if self.repair and (stored != truth or self.ix._c != truth):
            self.ix._c = truth
            from .store import _UPDATE_COUNTERS

            self.w(_UPDATE_COUNTERS, [truth[n] for n in COUNTER_NAMES])

    def run(self, progress=None) -> list[str]:
        steps = (self.root, self.dentries, self.tree, self.nameless, self.nlinks, self.inode_data,
                 self.missing_segments, self.refcounts, self.id_blocks, self.counters)
        for done, step in enumerate(steps):
            if progress is not None:
                progress(done, len(steps))
            step()
        if progress is not None:
            progress(len(steps), len(steps))
        return self.problems


def check(ix: Index, repair: bool, progress=None) -> list[str]:
    """`progress(steps_done, steps)` is called before each of the ten steps and at the end."""
    if ix._depth:
        raise RuntimeError("fsck cannot run inside a batch")
    # One transaction either way: a consistent snapshot for the check, atomic repairs.
    with ix._txn:
        return _Fsck(ix, repair).run(progress)

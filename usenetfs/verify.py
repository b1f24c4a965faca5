"""Is every file's data still on the server? BODY-check segments, name the damaged files,
re-post what a local copy exists for.

Owns `Verifier` (one run of `usenetfs verify`) and `file_paths` (inodes -> paths, also
used by the mount daemon's status answer). It works the same on an unmounted volume (the
CLI opens the index and an NNTP client itself) and inside the mount daemon (which passes
its read cache as the source of local copies); the caller decides which, so that only one
process ever writes the index.

What is checked: every segment that holds file data (referenced by an extent, posted at
least once), or a random sample of them. STAT would only say that *something* is stored
under the Message-ID; BODY plus decoding proves that it is our article, authenticated
under its own key, with the payload size the index expects (`SegmentStore.get`).

- missing: no article under the id (or the index already marks it missing);
- corrupt: an article is there but it does not decode or authenticate (someone posted
  under our id, or the provider mangled it).

With `repair`, a damaged segment whose payload the source still has is posted again:
first marked missing (intent first: its generation moves on, so the re-post gets the
next Message-ID, never the one the damaged or garbage article holds), then posted and
read back (`store.put`), then recorded verified. Without a local copy it is left alone:
marking it missing would point readers at an id that does not exist yet, and the old
article may come back (a provider that lost it for a moment).

Network trouble that outlives the retry policies stops the run (`VerifyStopped`): it says
nothing about the segments, and every further check would wait through the same policy.

Memory stays bounded at any volume size: segments are read in id batches (a sample is
drawn by geometric skips over the id space, never as a list of 30M ids), and only the
damaged ones are kept (their details up to `MAX_DETAILED`).
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field

import trio

from .errors import UserError
from .index import MISSING, POSTED, VERIFIED, Index, NotFound
from .index import audit
from .index.rows import SegmentRow
from .nntp.errors import NNTPError
from .store.base import SegmentStore, SegmentUnavailable

log = logging.getLogger(__name__)

BATCH = 1000  # segment ids per index query
MAX_DETAILED = 10_000  # damaged segments reported one by one (the rest are counted)

PayloadSource = Callable[[int], Awaitable["bytes | None"]]


class VerifyStopped(UserError):
    """The server failed in a way that says nothing about the segments: the run stopped."""


@dataclass
class Problem:
    segment: int
    generation: int  # the generation that was checked
    kind: str  # "missing" or "corrupt"
    reason: str
    files: list[str] = field(default_factory=list)
    repaired: bool = False
    repair: str | None = None  # with --repair: what was done, or why nothing could be


@dataclass
class VerifyReport:
    candidates: int  # segments holding file data when the run started
    sample_percent: float | None = None  # None: every segment
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0  # damaged segments beyond MAX_DETAILED (not detailed, not repaired)
    repair: bool = False

    @property
    def damaged(self) -> int:
        return len(self.problems) + self.more_problems

    @property
    def repaired(self) -> int:
        return sum(p.repaired for p in self.problems)

    @property
    def ok(self) -> bool:
        """Everything checked is readable now (was fine, or was repaired)."""
        return self.damaged == self.repaired

    def as_dict(self) -> dict:
        return asdict(self) | {"damaged": self.damaged, "repaired": self.repaired, "ok": self.ok}


class Verifier:
    """One verify run over `index` and `store`.

    sample        percent of segments to check (None or 100: all), drawn at random
    repair        post damaged segments again when `source(seg)` has their payload
    source        local copies of payloads (the mount's read cache), or None
    on_repaired   called with a segment id after it was posted again
    progress      progress(done, total), after every check
    """

    def __init__(
        self,
        index: Index,
        store: SegmentStore,
        *,
        sample: float | None = None,
        repair: bool = False,
        source: PayloadSource | None = None,
        on_repaired: Callable[[int], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        concurrency: int = 8,
        rng: random.Random | None = None,
    ) -> None:
        if sample is not None and not 0 < sample <= 100:
            raise UserError("--sample must be a percentage above 0 and at most 100")
        self.index = index
        self.store = store
        self.sample = None if sample is None or sample >= 100 else sample
        self.repair = repair
        self.source = source
        self.on_repaired = on_repaired or (lambda seg: None)
        self.progress = progress
        self.concurrency = max(1, concurrency)
        self.rng = rng or random.SystemRandom()
        self.total = 0

    async def run(self) -> VerifyReport:
        _, posted, verified, missing, _ = self.index.stats().segments
        candidates = posted + verified + missing  # a little high: unreferenced ones are skipped
        report = VerifyReport(candidates, self.sample, repair=self.repair)
        self.total = candidates if self.sample is None else round(candidates * self.sample / 100)
        send, receive = trio.open_memory_channel(2 * self.concurrency)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._produce, send)
            async with receive:
                for _ in range(self.concurrency):
                    nursery.start_soon(self._work, receive.clone(), report)
        self.total = report.checked
        self._progress(report)
        report.problems.sort(key=lambda problem: problem.segment)
        await self._name_files(report)
        return report

    # ------------------------------------------------------------------ which segments

    async def _produce(self, send: trio.MemorySendChannel) -> None:
        async with send:
            end = audit.segment_id_end(self.index)
            if self.sample is None:
                for first in range(1, end, BATCH):
                    for row in audit.data_segments_between(self.index, first, min(first + BATCH, end) - 1):
                        await send.send(row)
                    await trio.sleep(0)  # a mount's FUSE requests get their turn between batches
            else:
                ids = sampled_ids(self.rng, self.sample / 100, end)
                while chunk := [i for _, i in zip(range(audit.MAX_IDS_PER_QUERY), ids)]:
                    for row in audit.data_segments_in(self.index, chunk):
                        await send.send(row)
                    await trio.sleep(0)

    # ------------------------------------------------------------------ checking

    async def _work(self, receive: trio.MemoryReceiveChannel, report: VerifyReport) -> None:
        async with receive:
            async for row in receive:
                await self._check(row, report)

    async def _check(self, row: SegmentRow, report: VerifyReport) -> None:
        scope = self.index.scope_bytes(row.scope)
        problem = None
        if row.state == MISSING:
            problem = Problem(row.id, row.generation, "missing",
                              "marked missing by an earlier check and not posted again since")
        else:
            try:
                await self.store.get(row, scope)
            except SegmentUnavailable as error:
                kind = "missing" if error.missing else "corrupt"
                problem = Problem(row.id, row.generation, kind, error.reason)
            except NNTPError as error:
                raise VerifyStopped(f"verify stopped at segment {row.id}: {error} "
                                    f"({report.checked} segments checked, {report.damaged} damaged so far)") from None
        report.checked += 1
        self._progress(report)
        if problem is None:
            return
        current = self._still_holding_data(row)
        if current is None:
            return  # the file changed while we looked: its data is in other segments now
        log.info("segment %d is %s: %s", row.id, problem.kind, problem.reason)
        if len(report.problems) >= MAX_DETAILED:
            report.more_problems += 1
            return
        report.problems.append(problem)
        if self.repair:
            await self._repair(problem, current, scope)

    def _still_holding_data(self, row: SegmentRow) -> SegmentRow | None:
        try:
            current = self.index.segment(row.id)
        except NotFound:
            return None
        if current.refcount <= 0 or current.state not in (POSTED, VERIFIED, MISSING):
            return None
        if current.generation != row.generation:
            return None  # posted again meanwhile (another verify --repair)
        return current

    def _progress(self, report: VerifyReport) -> None:
        if self.progress is not None:
            self.progress(report.checked, max(self.total, report.checked))

    # ------------------------------------------------------------------ repair

    async def _repair(self, problem: Problem, row: SegmentRow, scope: bytes) -> None:
        if self.source is None:
            problem.repair = "no local copy: only a mounted volume has a cache to repair from"
            return
        payload = await self.source(row.id)
        if payload is None or len(payload) != row.payload_size:
            problem.repair = "not in the local cache: cannot be posted again"
            return
        if row.state != MISSING:
            self.index.mark_missing(row.id, row.generation)  # intent: the next Message-ID
            row = self.index.segment(row.id)
        try:
            result = await self.store.put(row, scope, payload)
        except NNTPError as error:
            problem.repair = f"posting it again failed: {error}"
            return
        with self.index.batch():
            self.index.mark_stored(row.id, row.generation, result.generation, result.stored_size, result.crc32)
            verified = self.index.mark_verified(row.id, result.generation)
        if not verified:
            problem.repair = "posted again, but the file changed meanwhile (its data is in other segments now)"
            return
        problem.repaired = True
        problem.repair = f"posted again from the local cache as generation {result.generation}"
        log.info("segment %d: %s", row.id, problem.repair)
        self.on_repaired(row.id)

    # ------------------------------------------------------------------ naming files

    async def _name_files(self, report: VerifyReport) -> None:
        if not report.problems:
            return
        damaged = sorted(p.segment for p in report.problems)
        holders: dict[int, set[int]] = defaultdict(set)  # segment -> inodes
        after: tuple[int, int] | None = (0, -1)
        while after is not None:
            found, after = audit.files_holding(self.index, damaged, after)
            for ino, segments in found.items():
                for seg in segments:
                    holders[seg].add(ino)
            await trio.sleep(0)
        paths = await file_paths(self.index, {ino for inos in holders.values() for ino in inos})
        for problem in report.problems:
            problem.files = sorted(path for ino in holders.get(problem.segment, ())
                                   for path in paths.get(ino, [f"(inode {ino}, no name)"]))


def sampled_ids(rng: random.Random, fraction: float, end: int) -> Iterator[int]:
    """Each id in [1, end) independently with probability `fraction`, in increasing order:
    geometric gaps, so memory and time follow the sample, not the id space."""
    if fraction >= 1:
        yield from range(1, end)
        return
    log_q = math.log1p(-fraction)
    current = 0
    while True:
        current += 1 + int(math.log(1.0 - rng.random()) / log_q)
        if current >= end:
            return
        yield current


async def file_paths(index: Index, inodes: Collection[int], *, limit: int = 10_000) -> dict[int, list[str]]:
    """Every path of each of `inodes` (hard links give several), for reports. Walks the
    directory entries in batches (no index on inode), yielding to the event loop between
    them; names that are not UTF-8 are shown with backslash escapes."""
    wanted = set(inodes)
    out: dict[int, list[str]] = defaultdict(list)
    if not wanted:
        return out
    known: dict[int, bytes] = {}
    after: tuple[int, bytes] | None = (0, b"")
    while after is not None:
        found, after = audit.entries_of(index, wanted, after, limit)
        for parent, name, ino in found:
            directory = audit.dir_path(index, parent, known).rstrip(b"/")
            out[ino].append((directory + b"/" + name).decode("utf-8", "backslashreplace"))
        await trio.sleep(0)
    return out


def report_lines(report: dict) -> list[str]:
    """The text form of a report (a `VerifyReport.as_dict()`, maybe from the mount daemon)."""
    what = "segments" if report["sample_percent"] is None else f"segments (a {report['sample_percent']:g}% sample)"
    lines = [f"checked {report['checked']} {what}: {report['checked'] - report['damaged']} readable, "
             f"{report['damaged']} damaged"]
    for p in report["problems"]:
        lines.append(f"{p['kind']} segment {p['segment']} (generation {p['generation']}): {p['reason']}")
        lines.extend(f"    {path}" for path in p["files"] or ["(no file holds it any more)"])
        if p["repair"]:
            lines.append(f"    repair: {p['repair']}")
    if report["more_problems"]:
        lines.append(f"... and {report['more_problems']} more damaged segments (not listed, not repaired)")
    if report["repair"] and report["damaged"]:
        lines.append(f"repaired {report['repaired']} of {report['damaged']} damaged segments")
    return lines


__all__ = ["MAX_DETAILED", "Problem", "VerifyReport", "VerifyStopped", "Verifier", "file_paths",
           "report_lines", "sampled_ids"]

"""The background uploader: dirty files -> segments -> verified articles -> extents.

Owns when and how dirty files are uploaded:

- Scheduling. Each dirty file has a due time: `idle_seconds` after its last write, soon
  (`release_delay`) after its last writer closed it (at once if it is too big to pack),
  now under staging pressure (files no writer holds) or during `flush_all`, and never
  before its retry backoff (`not_before`) runs out. A min-heap of (due, seq, ino) with at most one live entry per file (stale
  entries are skipped or re-pushed when popped), so picking costs O(log n) per file, not a
  scan of the dirty set on every wake-up.
- Streaming. A file still being written starts a job of its own as soon as it holds
  `stream_segments` whole segments past its clean part (`DirtyFile.clean_upto`): the job
  uploads [clean_upto, whole segments) and commits those extents (`replace_extent_range`)
  only if nothing it read was written meanwhile (`DirtyFile.changed_from`), then moves
  `clean_upto` up; the file stays dirty. So a big copy posts while it copies, and the job
  after the close uploads only the rest. (The staging file still holds the whole file
  until it is clean: streaming saves time, not staging space.) Off in FileData by default
  (`stream_segments=0`, and in VolumeSettings, where a user can set it). Once the
  per-article work on the trio thread shrank (articles posted in pieces), cp + upload of
  1 GiB went 116-118 -> 127-128 MB/s with 8 on this 2-core machine and a quiet disk, but
  88 -> 80 MB/s with GBs of dirty pages being written back, and cp returned 40-80% slower:
  not a default yet. Dropping the streamed prefix from staging (hole punching) would also
  bound staging for files larger than it.
- Jobs. A released small file (< pack_threshold) with a known group is packed with the
  other released small files of the same group (the parent directory, so a shared folder
  never holds a segment with bytes from outside it) into one segment: each member gets
  extents pointing inside it. Anything else is a job of its own: its data (holes skipped,
  SEEK_DATA/SEEK_HOLE) cut into `segment_size` segments allocated as ONE run
  (`new_segment_run`), so a dense file is one extent row.
- An upload: commit the segment rows pending (intent first); `store.put` the segments,
  several at once (a semaphore bounds segment uploads in flight; a payload is read from
  staging only inside it, so memory is bounded too); record each as posted as it lands;
  then ONE transaction per job marks the segments verified and replaces each member's
  extent map from its clean part on (`DirtyFile.clean_upto`: 0 unless streamed or
  materialised, so normally the whole map; and sets the inode size to the staged length,
  see `_commit`); then, for each member not written
  meanwhile (its write counter unchanged), retire the staging file: the file is clean at
  once, and the staging file is unlinked after the next index sync (a checkpoint, at most
  `sync_delay` later, at once under staging pressure or at the end of flush_all), since
  the index commits with synchronous=NORMAL and a power cut could otherwise keep the
  unlink and lose the commit.
- Failure. The job's files stay dirty, back off exponentially (capped, jittered) and are
  tried again; a single-file job keeps its plan (allocated run + the segments already
  verified) and resumes it if the file did not change. Nothing here blocks reads or
  other files' uploads. A pack's segment is discarded on failure (it is re-packed).
- Forget. A single-file job of a forgotten inode is cancelled and its segments
  discarded; a pack just skips the member at commit.

Crash table (what recover() at the next mount finds):
  before the rows commit .......... staging file only -> uploaded again
  rows pending/posted, no extents . staging file + garbage rows -> rows discarded, uploaded again
  after the extents commit, before the index sync + unlink -> staging file adopted and
                                   uploaded again (the extents it replaces die: a little
                                   garbage, no loss)
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections.abc import Callable

import trio

from ..errors import UsenetfsError
from ..index import Index, NotFound
from ..index import layout
from ..index.layout import ExtentRow
from ..store.base import PutResult, SegmentStore
from .staging import UNCHANGED, DirtyFile, Staging, data_regions, read_virtual

log = logging.getLogger("usenetfs.data")

_PACK_SCAN = 1000  # candidates looked at per pack
_PACK_SLACK = 4096  # a pack this close to full is full
_TICK = 0.05  # seconds: due times are served at this granularity (see _next_tick)


class _Member:
    """One file of a job, as it was when the job started: the job uploads its bytes
    [lo, hi) (lo: what is clean already; hi: its size, or less for a streamed part)."""

    __slots__ = ("d", "writes", "size", "lo", "hi", "regions", "vbase")

    def __init__(self, d: DirtyFile, hi: int | None = None) -> None:
        self.d = d
        self.writes = d.writes  # snapshot: "written meanwhile?" at commit
        self.size = d.size
        self.lo = d.clean_upto
        self.hi = d.size if hi is None else hi
        self.regions: list[tuple[int, int]] = []
        self.vbase = 0  # where its data starts in the job's virtual byte string
        d.changed_from = UNCHANGED

    @property
    def data_bytes(self) -> int:
        return sum(e - s for s, e in self.regions)


class _Plan:
    """The segments of one upload: a run of `count` ids from `first`, holding the
    members' data regions laid end to end (`total` bytes)."""

    __slots__ = ("members", "first", "count", "total", "stride", "done", "committed")

    def __init__(self, members: list[_Member], segment_size: int) -> None:
        self.members = members
        vpos = 0
        for m in members:
            m.vbase = vpos
            vpos += m.data_bytes
        self.total = vpos
        self.count = -(-vpos // segment_size) if vpos else 0
        # A run of several segments strides by the segment size; a single segment (a
        # pack or a small file) strides by its own payload size (layout.py).
        self.stride = segment_size if self.count > 1 else max(vpos, 1)
        self.first = 0
        self.done: dict[int, PutResult] = {}  # k -> result, for segment first + k
        self.committed = False

    def payload_range(self, k: int, segment_size: int) -> tuple[int, int]:
        start = k * segment_size
        return start, min(start + segment_size, self.total)

    def rows(self, m: _Member) -> list[ExtentRow]:
        out = []
        vpos = m.vbase
        for start, end in m.regions:
            out.append(layout.extent(start, end - start, self.first, vpos, self.stride, inode=m.d.ino))
            vpos += end - start
        return out

    def contains(self, seg: int) -> bool:
        return self.count > 0 and self.first <= seg < self.first + self.count


class _Job:
    __slots__ = ("members", "plan", "scope", "forgotten", "streamed")

    def __init__(self, files: list[DirtyFile], stream_to: int | None = None) -> None:
        self.members = [_Member(d, stream_to) for d in files]
        self.plan: _Plan | None = None
        self.scope: trio.CancelScope | None = None
        self.forgotten = False
        # A part of a file still being written (`stream`): committed only if nothing it
        # read changed meanwhile, and the file stays dirty.
        self.streamed = stream_to is not None

    @property
    def single(self) -> bool:
        return len(self.members) == 1


_END = 1 << 62  # "to the end of the file", for replace_extent_range


def _next_tick(deadline: float) -> float:
    """The first tick at or after `deadline`. The scheduling loop sleeps until then rather
    than until the deadline itself: in a burst of small files one is released every
    ~0.7 ms, each due `release_delay` later, and most are packed with an earlier one before
    they are due; waking at each of their due times (a Cancelled raised and caught each
    time) took 717 wake-ups for 2,500 files (32 with the tick), all on the trio thread while
    the burst ran. Work wanted sooner (a flush, pressure, a file due before the deadline)
    wakes the loop at once instead."""
    return math.ceil(deadline / _TICK) * _TICK if deadline < math.inf else math.inf


def _clipped(regions: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of data `regions` inside [lo, hi)."""
    return [(max(s, lo), min(e, hi)) for s, e in regions if e > lo and s < hi]


class UploadFailed(Exception):
    """Some segments of a job could not be stored; the first cause is chained."""


class Uploader:
    def __init__(
        self,
        index: Index,
        store: SegmentStore,
        staging: Staging,
        *,
        scope: int,
        segment_size: int,
        pack_threshold: int,
        idle_seconds: float,
        release_delay: float,
        concurrency: int,
        retry_base: float,
        retry_max: float,
        on_commit: Callable[[int], None],
        sync_delay: float = 1.0,
        stream_segments: int = 0,
    ) -> None:
        self.index = index
        self.store = store
        self.staging = staging
        self.scope = scope
        self.segment_size = segment_size
        self.pack_threshold = pack_threshold
        self.idle_seconds = idle_seconds
        self.release_delay = release_delay
        # A file being written streams out once this much past its clean part is waiting
        # (None: only after it is closed; see the module docstring for why that is the default).
        self.stream_bytes = stream_segments * segment_size if stream_segments > 0 else None
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.on_commit = on_commit
        self._concurrency = concurrency
        self._segments = trio.Semaphore(concurrency)  # segment uploads in flight, all jobs
        self._max_jobs = max(2, 2 * concurrency)
        self._heap: list[tuple[float, int, int]] = []
        self._seq = itertools.count()
        self._groups: dict[int, dict[int, DirtyFile]] = {}  # group -> released files in it
        self._jobs: set[_Job] = set()
        self._plans: dict[int, _Plan] = {}  # ino -> plan kept for resuming a failed upload
        self._wake = trio.Event()
        self._deadline = math.inf
        self._nursery: trio.Nursery | None = None
        self.flushing = 0
        self.running = False
        self._pressured = False
        self.sync_delay = sync_delay
        self._sync_at = math.inf  # when to make the index durable and purge retired files
        self.wakeups = 0  # passes of the scheduling loop (tests, diagnosis)

    # ------------------------------------------------------------------ scheduling

    def schedule(self, d: DirtyFile, due: float) -> None:
        """Set when `d` should be uploaded (later or sooner than before)."""
        d.due = due
        if d.heap_due is None or due < d.heap_due:
            d.heap_due = due
            heapq.heappush(self._heap, (due, next(self._seq), d.ino))
            if max(due, d.not_before) < self._deadline:
                self._wake.set()

    def written(self, d: DirtyFile) -> None:
        now = trio.current_time()
        self.schedule(d, now if self.flushing else now + self.idle_seconds)
        self._maybe_stream(d)

    def _maybe_stream(self, d: DirtyFile) -> None:
        """Upload the whole segments a file being written has past its clean part now,
        instead of after it is closed: a big copy then posts while it is still copying.
        Tried after every write and when its previous job ends."""
        if self.stream_bytes is None or not d.open_for_write or d.job is not None:
            return
        if d.size - d.clean_upto < self.stream_bytes:
            return
        if self._nursery is None or len(self._jobs) >= self._max_jobs:
            return  # the next write tries again
        if d.not_before <= trio.current_time():
            segments = (d.size - d.clean_upto) // self.segment_size
            self._start([d], stream_to=d.clean_upto + segments * self.segment_size)

    def released(self, d: DirtyFile, group: int) -> None:
        if d.group != group:
            self._ungroup(d)
            d.group = group
        self._groups.setdefault(group, {})[d.ino] = d
        now = trio.current_time()
        # A file too big to pack waits for nothing: upload it now. A small one waits a
        # moment for its directory's next files, to share a segment with them.
        urgent = self.flushing or self.staging.under_pressure or d.size >= self.pack_threshold
        self.schedule(d, min(d.due, now if urgent else now + self.release_delay))

    def _ungroup(self, d: DirtyFile) -> None:
        if d.group is not None:
            members = self._groups.get(d.group)
            if members is not None:
                members.pop(d.ino, None)
                if not members:
                    del self._groups[d.group]

    def pressure(self) -> None:
        """A writer waits for staging space: every released file is due now. (Once per
        episode: waiting writers call this on every wake-up; files released during the
        episode are made due at once by `released`.)"""
        self._wake.set()
        if self._pressured:
            return
        self._pressured = True
        now = trio.current_time()
        if self.staging.retired:
            self._sync_at = min(self._sync_at, now)
        for d in self.staging.files.values():
            if not d.open_for_write and d.job is None and d.due > now:
                self.schedule(d, now)

    def flush_now(self) -> None:
        """Everything due now, backoff forgotten once (flush_all, umount)."""
        now = trio.current_time()
        for d in self.staging.files.values():
            d.not_before = min(d.not_before, now)
            if d.job is None:
                self.schedule(d, now)
        self._wake.set()

    def _want_sync(self) -> None:
        # Under staging pressure at once (it is what frees the space writers wait for);
        # otherwise coalesce the commits of `sync_delay` seconds into one checkpoint.
        delay = 0.0 if self.staging.under_pressure else self.sync_delay
        self._sync_at = min(self._sync_at, trio.current_time() + delay)
        if self._sync_at < self._deadline:
            self._wake.set()

    def sync_retired(self) -> bool:
        """Make the index durable (a WAL checkpoint: SQLite syncs the WAL before it and
        the database after it) and unlink the staging files of files whose upload it
        committed. False if the checkpoint could not finish (another process reading the
        index pins the WAL): tried again after `sync_delay`."""
        if not self.staging.retired:
            self._sync_at = math.inf
            return True
        if self.index.checkpoints_held:
            # A backup is reading the database file: an fsync of the WAL makes the
            # commits just as durable.
            self.index.sync()
            self.staging.purge_retired()
            self._sync_at = math.inf
            return True
        _, log_frames, done = self.index.checkpoint("PASSIVE")
        if log_frames < 0 or done >= log_frames:  # -1: not a WAL database (in memory)
            self.staging.purge_retired()
            self._sync_at = math.inf
            return True
        self._sync_at = trio.current_time() + self.sync_delay
        return False

    def dropped(self, d: DirtyFile) -> None:
        """`d` left the dirty set (uploaded or forgotten)."""
        self._ungroup(d)

    # ------------------------------------------------------------------ the task

    async def run(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.running = True
        try:
            while True:
                self.wakeups += 1
                if trio.current_time() >= self._sync_at:
                    self.sync_retired()
                self._start_due_jobs()
                if len(self._jobs) >= self._max_jobs or not self._heap:
                    self._deadline = self._sync_at
                else:
                    self._deadline = min(self._heap[0][0], self._sync_at)
                with trio.move_on_at(_next_tick(self._deadline)):
                    await self._wake.wait()
                self._wake = trio.Event()
        finally:
            self.running = False
            self._nursery = None

    def _start_due_jobs(self) -> None:
        now = trio.current_time()
        heap = self._heap
        files = self.staging.files
        while heap and heap[0][0] <= now and len(self._jobs) < self._max_jobs:
            due, _, ino = heapq.heappop(heap)
            d = files.get(ino)
            if d is None or d.heap_due != due:
                continue  # stale entry: the file is gone or has a sooner entry
            d.heap_due = None
            if d.job is not None:
                continue  # rescheduled when its job ends
            later = max(d.due, d.not_before)
            if later > now:
                # Written since (due moved later) or backing off: park it until then.
                d.heap_due = later
                heapq.heappush(heap, (later, next(self._seq), ino))
                continue
            self._start(self._members_for(d, now))
        if self._pressured and not self.staging.under_pressure:
            self._pressured = False

    def _members_for(self, d: DirtyFile, now: float) -> list[DirtyFile]:
        if d.open_for_write or d.group is None or d.size >= self.pack_threshold:
            return [d]
        members, total = [d], d.size
        # Bounded scan: a directory with 100k released files must not make every pick
        # O(n). Files not taken now are picked up by a later pack.
        for scanned, s in enumerate(self._groups.get(d.group, {}).values()):
            if scanned >= _PACK_SCAN or total >= self.segment_size - _PACK_SLACK:
                break
            if s is d or s.job is not None or s.open_for_write or s.not_before > now:
                continue
            if s.size >= self.pack_threshold or total + s.size > self.segment_size:
                continue
            members.append(s)
            total += s.size
        return members

    def _start(self, files: list[DirtyFile], stream_to: int | None = None) -> None:
        job = _Job(files, stream_to)
        for d in files:
            d.job = job
        self._jobs.add(job)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_job, job)

    def job_of(self, ino: int) -> _Job | None:
        d = self.staging.files.get(ino)
        return None if d is None else d.job

    @property
    def active_jobs(self) -> int:
        return len(self._jobs)

    # ------------------------------------------------------------------ one job

    async def _run_job(self, job: _Job) -> None:
        error: BaseException | None = None
        try:
            with trio.CancelScope() as job.scope:
                await self._upload(job)
        except Exception as e:  # noqa: BLE001 - every failure means "retry later"
            error = e
        finally:
            self._finish(job, error)

    async def _upload(self, job: _Job) -> None:
        staging = self.staging
        paths = [staging.path(m.d.ino) for m in job.members]
        # No fsync here: until the extents commit, nothing refers to what this job reads
        # (a crash leaves garbage rows, and the staging file as FileData's commit loop or
        # an fsync() made it durable); after it, the server has the bytes.
        spans = [(p, m.size) for p, m in zip(paths, job.members)]
        regions = await trio.to_thread.run_sync(lambda: [data_regions(p, n) for p, n in spans])
        for m, r in zip(job.members, regions):
            m.regions = _clipped(r, m.lo, m.hi)

        plan = self._resumable(job)
        if plan is None:
            plan = _Plan(job.members, self.segment_size)
            if plan.count:
                last = plan.total - (plan.count - 1) * self.segment_size
                first_size = self.segment_size if plan.count > 1 else plan.total
                plan.first = self.index.new_segment_run(
                    self.scope, plan.count, first_size, last if plan.count > 1 else None
                )
            if job.single:
                self._plans[job.members[0].d.ino] = plan
        job.plan = plan

        sources = [(p, m.regions) for p, m in zip(paths, plan.members)]
        scope_id = self.index.scope_bytes(self.scope)
        errors: list[BaseException] = []
        todo = iter([k for k in range(plan.count) if k not in plan.done])

        async def worker() -> None:
            # A few workers per job (not a task per segment: a 10 GB file has 15,000),
            # and no new segment once one failed: a server that is down would otherwise
            # make every remaining segment run through its whole retry policy first.
            for k in todo:
                if errors:
                    return
                await self._put_one(plan, k, sources, scope_id, errors)

        async with trio.open_nursery() as nursery:
            for _ in range(min(self._concurrency, plan.count - len(plan.done))):
                nursery.start_soon(worker)
        if errors:
            raise UploadFailed(f"{len(errors)} of {plan.count} segment(s) failed: {errors[0]}") from errors[0]
        self._commit(job, plan)

    def _resumable(self, job: _Job) -> _Plan | None:
        """The plan of an earlier, failed attempt, if the file has not changed since."""
        if not job.single:
            return None
        m = job.members[0]
        plan = self._plans.get(m.d.ino)
        if plan is None:
            return None
        old = plan.members[0]
        if (old.writes, old.size, old.lo, old.hi, old.regions) == (m.writes, m.size, m.lo, m.hi, m.regions):
            plan.members[0] = m
            m.vbase = old.vbase
            return plan
        del self._plans[m.d.ino]
        self._discard(plan)
        return None

    async def _put_one(self, plan: _Plan, k: int, sources, scope_id: bytes, errors: list) -> None:
        seg = plan.first + k
        async with self._segments:
            start, end = plan.payload_range(k, self.segment_size)
            payload = await trio.to_thread.run_sync(read_virtual, sources, start, end)
            row = self.index.segment(seg)
            try:
                result = await self.store.put(row, scope_id, payload)
            except Exception as e:  # noqa: BLE001
                try:
                    self.index.mark_failed(seg)
                except NotFound:
                    pass
                errors.append(e)
                return
        self._record_posted(row.id, row.generation, result)
        plan.done[k] = result

    def _record_posted(self, seg: int, generation: int, result: PutResult) -> None:
        self.index.mark_stored(seg, generation, result.generation, result.stored_size, result.crc32)

    def _commit(self, job: _Job, plan: _Plan) -> None:
        """One transaction: segments verified, every surviving member's extents replaced.

        Size rule: a member not written since the job started gets the inode size set to
        its staged length (the staging file is the truth for a dirty file, and this is
        the moment it stops being dirty: normally a no-op, it repairs an index size that
        lags after a crash). A member written meanwhile keeps the fs's size; its rows are
        cut to it, and it stays dirty (the next upload supersedes these extents)."""
        index = self.index
        files = self.staging.files
        committed: list[_Member] = []
        with index.batch():
            for m in plan.members:
                if files.get(m.d.ino) is not m.d:
                    continue  # forgotten (or dropped and dirtied anew) meanwhile
                try:
                    inode = index.get_inode(m.d.ino)
                except NotFound:
                    continue
                if not committed:
                    for k, result in plan.done.items():
                        index.mark_verified(plan.first + k, result.generation)
                rows = plan.rows(m)
                if job.streamed:
                    if m.d.changed_from < m.hi:
                        continue  # bytes it read changed meanwhile: its segments are garbage
                    if inode.size < m.hi:  # the fs keeps a written size in memory a while
                        index.update_inode(m.d.ino, size=m.hi)
                    index.replace_extent_range(m.d.ino, m.lo, m.hi, rows)
                    committed.append(m)
                    continue
                if m.d.writes == m.writes:
                    size = m.size
                    if inode.size != size:
                        index.update_inode(m.d.ino, size=size)
                else:
                    size = inode.size
                    rows = layout.truncated(rows, size)
                # [0, lo) is clean already; the size is set above, same batch.
                index.replace_extent_range(m.d.ino, m.lo, _END, rows)
                committed.append(m)
            if not committed:
                self._discard(plan)
            elif plan.count:
                # A member cut shorter meanwhile (truncated) or skipped (gone, written
                # again) leaves some of these segments without an extent: they die now,
                # as superseded segments do, instead of staying live and unreferenced.
                index.discard_unreferenced(plan.first, plan.first + plan.count - 1)
        plan.committed = True
        for m in committed:
            d = m.d
            self.on_commit(d.ino)
            if job.streamed:
                d.clean_upto = m.hi  # nothing below hi changed (checked above)
                d.failures = 0
                d.last_error = None
            elif d.writes == m.writes:
                # Clean now; its staging file goes once this commit is durable.
                self.staging.retire(d.ino)
                self.dropped(d)
                self._want_sync()
            else:
                d.failures = 0
                d.last_error = None
        if job.single:
            self._plans.pop(job.members[0].d.ino, None)
        log.debug(
            "uploaded %s: %d bytes in %d segment(s)",
            ", ".join(str(m.d.ino) for m in committed) or "nothing",
            plan.total,
            plan.count,
        )

    def _discard(self, plan: _Plan) -> None:
        if not plan.count or plan.committed:
            return
        # One range query: rows already gone are skipped, referenced ones stay.
        self.index.discard_unreferenced(plan.first, plan.first + plan.count - 1)
        plan.count = 0

    def _finish(self, job: _Job, error: BaseException | None) -> None:
        """Runs when a job ends in any way (committed, failed, cancelled)."""
        self._jobs.discard(job)
        plan = job.plan
        if plan is not None and not plan.committed and (error is None or not job.single or job.forgotten):
            # Cancelled (forget, shutdown) or a failed pack: its rows are garbage now.
            # (A failed single-file job keeps its plan to resume; recover() at the next
            # mount discards whatever is left over.)
            if job.single:
                self._plans.pop(job.members[0].d.ino, None)
            self._discard(plan)
        now = trio.current_time()
        files = self.staging.files
        delay = None
        for m in job.members:
            d = m.d
            if d.job is job:
                d.job = None
            if files.get(d.ino) is not d:
                continue
            if error is not None:
                d.failures += 1
                d.last_error = f"{type(error).__name__}: {error}"
                delay = min(self.retry_max, self.retry_base * 2 ** (d.failures - 1)) * random.uniform(0.5, 1.0)
                d.not_before = now + delay
            self.schedule(d, d.due)
            self._maybe_stream(d)
        if error is not None:
            failures = max((m.d.failures for m in job.members), default=0)
            log.log(
                logging.WARNING if failures <= 3 or failures % 10 == 0 else logging.INFO,
                "upload of inode%s %s failed (attempt %d): %s; retrying in %.1f s",
                "" if job.single else "s",
                ", ".join(str(m.d.ino) for m in job.members),
                failures,
                error,
                delay or 0.0,
                # A traceback only for what is not an expected failure (a bug).
                exc_info=not isinstance(error.__cause__ or error, (UsenetfsError, OSError)),
            )
        self.staging.notify()
        self._wake.set()

    # ------------------------------------------------------------------ forget, recover

    def forget(self, d: DirtyFile | None, ino: int) -> None:
        """Inode `ino` is deleted (its staging file already dropped)."""
        if d is not None:
            self._ungroup(d)
            job = d.job
            if job is not None and job.single:
                job.forgotten = True
                if job.scope is not None:
                    job.scope.cancel()
        plan = self._plans.pop(ino, None)
        if plan is not None and (d is None or d.job is None or d.job.plan is not plan):
            self._discard(plan)

    def owns(self, seg: int) -> bool:
        """True if `seg` belongs to an upload of this instance (not crash leftovers)."""
        if any(p.contains(seg) for p in self._plans.values()):
            return True
        return any(j.plan is not None and j.plan.contains(seg) for j in self._jobs)

    def discard_leftovers(self) -> int:
        """Discard segment rows no extent references and no upload of ours owns: what a
        crash mid-upload leaves (pending or posted, never verified). Returns the count."""
        doomed = []
        after = 0
        while True:
            rows = self.index.pending_segments(1000, after)
            if not rows:
                break
            doomed.extend(r.id for r in rows if r.refcount == 0 and not self.owns(r.id))
            after = rows[-1].id
        if doomed:
            with self.index.batch():
                for seg in doomed:
                    self.index.discard_segment(seg)
        return len(doomed)


__all__ = ["Uploader", "UploadFailed"]

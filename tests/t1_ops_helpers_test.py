"""t1: the small helpers behind the day-to-day commands: the progress display, the
random sample of segment ids verify draws, and the moving-window transfer rates."""

from __future__ import annotations

import io
import random

import trio
import trio.testing

from usenetfs.cli.progress import PLAIN_INTERVAL, Progress
from usenetfs.nntp.retry import RetryStats
from usenetfs.nntp.throughput import Throughput
from usenetfs.verify import sampled_ids


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_terminal_redraws_one_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # shutil.get_terminal_size reads it first
    out, clock = io.StringIO(), Clock()
    with Progress("posting", unit="bytes", stream=out, tty=True, clock=clock) as progress:
        progress.update(0, 4_000_000)
        clock.now += 0.05
        progress.update(1_000_000, 4_000_000)  # too soon after the last redraw: skipped
        clock.now += 2
        progress.update(2_000_000, 4_000_000)
        clock.now += 2
        progress.update(4_000_000, 4_000_000)  # the end is always drawn
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 3
    assert "0% (0.0 MB of 4.0 MB)" in frames[0]
    bar = frames[1][frames[1].index("[") + 1 : frames[1].index("]")]
    assert len(bar) >= 10 and bar.count("#") == len(bar) // 2 and "50%" in frames[1]
    assert "1.0 MB/s" in frames[1] and "2 s left" in frames[1]
    assert frames[2].startswith(f"posting [{'#' * len(bar)}] 100% (4.0 MB of 4.0 MB)")
    assert frames[2].endswith("\n") and "\n" not in "".join(frames[:2])


def test_progress_in_a_log_prints_few_plain_lines():
    out, clock = io.StringIO(), Clock()
    with Progress("verifying", unit="segments", stream=out, tty=False, clock=clock) as progress:
        for done in range(0, 101):
            progress.update(done, 100)
            clock.now += PLAIN_INTERVAL / 20  # 25 s in all: a line at most every PLAIN_INTERVAL
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= 6, lines
    assert all(line.startswith("verifying: ") and "\r" not in line for line in lines)
    assert lines[-1].startswith("verifying: 100% (100 of 100 segments)")


def test_progress_of_quick_or_empty_work_prints_nothing():
    for tty in (False, True):
        out = io.StringIO()
        with Progress("posting", stream=out, tty=tty, clock=Clock()) as progress:
            progress.line({"done": 0, "total": 0})  # nothing to post
        assert out.getvalue() == ""
    out = io.StringIO()
    with Progress("fsck", unit="steps", stream=out, tty=False, clock=Clock()) as progress:
        for step in range(10):
            progress.update(step, 9)  # all within a moment: no line in a log
    assert out.getvalue() == ""


def test_sampled_ids_are_a_sorted_uniform_sample():
    rng = random.Random(7)
    ids = list(sampled_ids(rng, 0.01, 1_000_001))
    assert ids == sorted(set(ids))
    assert 1 <= ids[0] and ids[-1] <= 1_000_000
    assert 9_000 < len(ids) < 11_000  # 1% of a million (about 100 sd from the bounds)
    halves = sum(i <= 500_000 for i in ids) / len(ids)
    assert 0.45 < halves < 0.55  # spread over the whole id space
    assert list(sampled_ids(rng, 1.0, 6)) == [1, 2, 3, 4, 5]
    assert list(sampled_ids(rng, 0.5, 1)) == []


async def test_throughput_is_a_moving_window(autojump_clock: trio.testing.MockClock):
    stats = RetryStats()
    meter = Throughput(stats, window=10.0, interval=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(meter.run)
        assert meter.rates()["upload_bytes_per_second"] == 0
        for _ in range(20):  # 1 MB/s up for 20 s
            await trio.sleep(1)
            stats.bytes_sent += 1_000_000
        rates = meter.rates()
        assert 0.9e6 <= rates["upload_bytes_per_second"] <= 1.1e6
        assert rates["download_bytes_per_second"] == 0 and rates["bytes_sent"] == 20_000_000
        await trio.sleep(30)  # idle: the window forgets the burst
        assert meter.rates()["upload_bytes_per_second"] == 0
        stats.bytes_received += 5_000_000
        await trio.sleep(5)
        assert 0.4e6 <= meter.rates()["download_bytes_per_second"] <= 1.0e6
        nursery.cancel_scope.cancel()

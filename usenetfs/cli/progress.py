"""Progress of long commands on stderr: a bar on a terminal, plain lines otherwise.

Owns `Progress`, used by umount (waiting for uploads), flush, verify, fsck and restore,
and `SyncProgress` (files and bytes with their rates) for sync.
On a terminal it redraws one line in place (bar, percentage, amount, rate, time left) at
most ten times a second. Otherwise (a log, a pipe, systemd) it prints a plain line when
another tenth of the work is done, at most one every `PLAIN_INTERVAL` seconds, and a last
one at the end if it printed any: a long job shows its progress in the log, a short one
leaves no noise.
Hand-written because it is this small: a library would add a dependency for one line.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

REDRAW_INTERVAL = 0.1  # seconds between terminal redraws
PLAIN_INTERVAL = 5.0  # seconds between plain progress lines


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 1e6:.1f} MB"
    return f"{value:.0f} {unit}"


class Progress:
    """progress = Progress("posting", unit="bytes"); progress.update(done, total); ...;
    progress.close(). `update` also accepts the mount daemon's {"done", "total"} lines
    through `line`. Nothing is printed for work that has nothing to do (total 0)."""

    def __init__(self, label: str, *, unit: str = "bytes", stream: TextIO | None = None,
                 tty: bool | None = None, clock=time.monotonic) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.total = 0
        self._drawn_at = 0.0
        self._drawn_width = 0
        self._printed_at = self.started
        self._printed_tenths = 0
        self._printed_any = False

    def line(self, answer: dict) -> None:
        """A progress line of the mount daemon's control socket."""
        self.update(answer.get("done", 0), answer.get("total", 0))

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, max(total, done)
        if not self.total:
            return
        if self.tty:
            now = self.clock()
            if now - self._drawn_at >= REDRAW_INTERVAL or done >= self.total:
                self._drawn_at = now
                self._draw()
        else:
            tenths = 10 * done // self.total
            now = self.clock()
            if tenths > self._printed_tenths and now - self._printed_at >= PLAIN_INTERVAL:
                self._print_plain(tenths, now)

    def close(self) -> None:
        """End the bar's line (a terminal), or print the final state if progress lines
        were printed (plain)."""
        if self.tty and self._drawn_width:
            print(file=self.stream, flush=True)
            self._drawn_width = 0
        elif not self.tty and self._printed_any and self._printed_tenths < 10 and self.total:
            self._print_plain(10 * self.done // self.total, self.clock())

    def _print_plain(self, tenths: int, now: float) -> None:
        self._printed_tenths, self._printed_at, self._printed_any = tenths, now, True
        print(f"{self.label}: {self._summary()}", file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _summary(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        if self.unit == "bytes":
            amounts = f"{_amount(self.done, self.unit)} of {_amount(self.total, self.unit)}"
        else:
            amounts = f"{self.done} of {self.total} {self.unit}"
        text = f"{100 * fraction:3.0f}% ({amounts})"
        elapsed = self.clock() - self.started
        if elapsed >= 1 and self.done:
            rate = self.done / elapsed
            text += f", {_amount(rate, self.unit)}/s"
            if self.done < self.total:
                text += f", {_duration((self.total - self.done) / rate)} left"
        return text

    def _draw(self) -> None:
        columns = shutil.get_terminal_size((80, 24)).columns
        summary = self._summary()
        # The bar's width does not follow the summary's length, so it does not jitter.
        bar_width = max(10, min(40, columns - len(self.label) - 50))
        filled = int(bar_width * self.done / self.total) if self.total else bar_width
        text = f"{self.label} [{'#' * filled}{'.' * (bar_width - filled)}] {summary}"[: columns - 1]
        padding = " " * max(0, self._drawn_width - len(text))
        self.stream.write(f"\r{text}{padding}")
        self.stream.flush()
        self._drawn_width = len(text)


class SyncProgress(Progress):
    """The progress of `usenetfs sync`: files and bytes copied out of those found so far
    (with "+" while the source is still being scanned: the totals still grow), entries
    checked, and the rates of both. Fed with the sync's stats (a dict, as the mount
    daemon streams them, or SyncStats.as_dict()) and (done, total) units of work."""

    def __init__(self, label: str = "syncing", **kwargs) -> None:
        super().__init__(label, unit="files", **kwargs)
        self.stats: dict = {}

    def line(self, answer: dict) -> None:
        self.stats = answer.get("stats") or self.stats
        self.update(answer.get("done", 0), answer.get("total", 0))

    def sync_update(self, stats: dict, done: int, total: int) -> None:
        self.stats = stats
        self.update(done, total)

    def _summary(self) -> str:
        s = self.stats
        if not s:
            return super()._summary()
        scanning = not s.get("scan_done")
        more = "+" if scanning else ""
        files, files_total = s["copied_files"], s["to_copy_files"]
        copied, to_copy = s["copied_bytes"], s["to_copy_bytes"]
        fraction = self.done / self.total if self.total else 1.0
        text = (f"{100 * fraction:3.0f}% {files:,} of {files_total:,}{more} files "
                f"({_amount(copied, 'bytes')} of {_amount(to_copy, 'bytes')}{more}), {s['scanned']:,} checked")
        elapsed = self.clock() - self.started
        if elapsed >= 1:
            text += f", {files / elapsed:,.0f} files/s, {_amount(copied / elapsed, 'bytes')}/s"
            if not scanning and self.done and self.done < self.total:
                text += f", {_duration((self.total - self.done) * elapsed / self.done)} left"
        return text


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


__all__ = ["Progress", "SyncProgress"]

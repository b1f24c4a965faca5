"""`for_each`: an async function over many items, a bounded number at a time.

Backups and restores touch thousands of chunks; starting a task per chunk would hold
every chunk in memory at once. Here `concurrency` workers share one iterator, so at most
that many items are in flight. The first failure cancels the others and is raised alone
(not wrapped in an exception group), so callers and the command line see one clear error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import trio

T = TypeVar("T")


async def for_each(items: Iterable[T], fn: Callable[[T], Awaitable[None]], concurrency: int) -> None:
    queue = iter(items)

    async def worker() -> None:
        for item in queue:  # shared: the next() calls happen between awaits, one at a time
            await fn(item)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, concurrency)):
                nursery.start_soon(worker)
    except BaseExceptionGroup as group:
        raise _first_error(group) from None


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first error that is not a cancellation (those are the other workers' echoes);
    the group itself if it holds nothing else (a cancellation from outside)."""
    for error in group.exceptions:
        inner = _first_error(error) if isinstance(error, BaseExceptionGroup) else error
        if not isinstance(inner, (trio.Cancelled, BaseExceptionGroup)):
            return inner
    return group

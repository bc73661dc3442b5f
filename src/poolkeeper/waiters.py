"""The waiter queue's scans, shared by both pools' deadline keepers.

Each pool queues its own kind of waiter (a lock-holding object, a future's tuple) in
a ``deque``, in arrival order; these helpers only need each waiter's deadline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TypeVar

__all__ = ["overdue_waiters", "remove_waiter"]

_W = TypeVar("_W")


def overdue_waiters(
    waiters: deque[_W], now: float, deadline_of: Callable[[_W], float]
) -> tuple[list[_W], float]:
    """The waiters whose deadline has passed, earliest first (still queued), and the
    earliest deadline still ahead (inf if none): one scan for both pools' deadline
    keepers, whose waiters join in order and so are nearly sorted already."""
    overdue: list[_W] = []
    next_at = float("inf")
    for waiter in waiters:
        deadline = deadline_of(waiter)
        if deadline <= now:
            overdue.append(waiter)
        elif deadline < next_at:
            next_at = deadline
    overdue.sort(key=deadline_of)
    return overdue, next_at


def remove_waiter(waiters: deque[_W], waiter: _W) -> None:
    """Take ``waiter`` out of the queue; overdue ones are nearly always at its head,
    where no scan is needed."""
    if waiters[0] is waiter:
        waiters.popleft()
    else:
        waiters.remove(waiter)

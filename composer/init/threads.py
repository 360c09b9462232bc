"""Filling large tensors in several threads at once.

Drawing random numbers is most of what initializing a large model costs (about 3 ns an element
on CPU), and torch releases the GIL while it draws, so threads that fill disjoint tensors run side
by side. Each thread reseeds its own generator from each tensor's path, so the values are those
of a serial fill, bit for bit, whatever the split.

Only large tensors go to other threads. A small fill is mostly Python (seeding, the call), done
under the GIL: measured here with 2,000 fills of 64 x 64 in two threads, the GIL passed back and
forth on every fill and the pair took as long as one thread, at twice the CPU time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

Job = TypeVar("Job")

MAX_THREADS = 8
LARGE = 1 << 18  # elements: about 1 ms of drawing, where handing the GIL over costs little beside it

_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def threads_for(large_elements: int) -> int:
    """How many threads share ``large_elements`` elements of large tensors: one per ``LARGE``
    elements, at most as many as torch may use (``torch.get_num_threads()``) and ``MAX_THREADS``."""
    return max(1, min(torch.get_num_threads(), MAX_THREADS, large_elements // LARGE))


def run_split(
    jobs: Sequence[Job],
    weight: Callable[[Job], int],
    run: Callable[[Sequence[Job]], None],
    alone: Callable[[Sequence[Job]], None] | None = None,
) -> None:
    """``run`` over ``jobs``: the large ones (``weight``, in elements, at least ``LARGE``) split
    into parts of about equal weight, one per thread; the calling thread runs the small ones and the
    first part. Every part has finished when this returns, also when one raised (the first error
    is raised). Where one thread does it all, ``alone`` (default ``run``) runs every job."""
    weights = [weight(job) for job in jobs]
    large = [(job, w) for job, w in zip(jobs, weights, strict=True) if w >= LARGE]
    n = threads_for(sum(w for _, w in large))
    if n == 1:
        (alone or run)(jobs)
        return
    parts = _split(large, n)
    small = [job for job, w in zip(jobs, weights, strict=True) if w < LARGE]
    pool = _executor()
    futures: list[Future] = [pool.submit(run, part) for part in parts[1:]]
    try:
        run([*small, *parts[0]])
    finally:
        errors = [f.exception() for f in futures]  # waits for each
    for error in errors:
        if error is not None:
            raise error


def _split(weighted: list[tuple[Job, int]], n: int) -> list[list[Job]]:
    """Contiguous parts of about equal total weight, at most ``n``."""
    share, parts, part, total = sum(w for _, w in weighted) / n, [], [], 0
    for job, w in weighted:
        part.append(job)
        total += w
        if total >= share * (len(parts) + 1) and len(parts) < n - 1:
            parts.append(part)
            part = []
    return [*parts, part] if part else parts


def _executor() -> ThreadPoolExecutor:
    """One pool for the process, made anew in a forked child (the parent's threads are not there)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(MAX_THREADS - 1, thread_name_prefix="composer-fill"))
        return _pool[1]

"""Running a test's function on several ranks: real processes, a real gloo process group on CPU.

``run_ranks(world_size, fn, *args)`` starts ``world_size`` fresh interpreters, each joining one
gloo group (rendezvous through a file, so no port can clash) and calling ``fn(rank, world_size,
*args)``; a failure on any rank fails the call with that rank's traceback. Every rank is waited
for, whatever the others do: a test may kill one and check what the rest did. ``PeakMemory``
measures the bytes a block of code allocates at its peak.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


def run_ranks(
    world_size: int, fn: Callable[..., None], *args: Any, exits: list[int] | None = None, timeout: float = 300
) -> None:
    """``fn(rank, world_size, *args)`` on every rank of a fresh gloo group of ``world_size``.

    Raises:
        AssertionError: a rank raised (its traceback in the message), ran past ``timeout``, or
            ended with another exit code than ``exits`` says (default: 0 for every rank; a
            negative code is the signal that killed it).
    """
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        ranks = [
            context.Process(target=_rank_main, args=(rank, world_size, store, folder, fn, args), daemon=True)
            for rank in range(world_size)
        ]
        for process in ranks:
            process.start()
        deadline = time.monotonic() + timeout
        for process in ranks:
            process.join(max(deadline - time.monotonic(), 0))
        hung = [rank for rank, process in enumerate(ranks) if process.is_alive()]
        for rank in hung:
            ranks[rank].kill()
        errors = [Path(folder, f"rank{rank}.err") for rank in range(world_size)]
        failures = "\n".join(f"rank {i}:\n{e.read_text()}" for i, e in enumerate(errors) if e.exists())
        assert not failures and not hung, failures or f"ranks {hung} ran past {timeout} s"
        codes = [process.exitcode for process in ranks]
        assert codes == (exits or [0] * world_size), f"exit codes {codes}"


def _rank_main(rank: int, world_size: int, store: str, folder: str, fn: Callable[..., None], args: tuple) -> None:
    torch.set_num_threads(1)  # ranks share this machine's cores
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
        )
        fn(rank, world_size, *args)
        dist.barrier()  # every rank done before any tears down: gloo aborted (-6) on a rank left behind
    except BaseException:
        Path(folder, f"rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)  # at once: a peer that failed must not leave this rank in a collective
    dist.destroy_process_group()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: its gloo threads' exit raced the peers' (SIGABRT, 1 run in ~25)


def cpu_mesh() -> DeviceMesh:
    return init_device_mesh("cpu", (dist.get_world_size(),))


class PeakMemory:
    """The most bytes the C heap held beyond what it held on entry, sampled every millisecond on a
    thread while the block runs (glibc's ``mallinfo2``: bytes in use plus ``mmap``-ed chunks, which
    is where torch's CPU tensors live). Allocated bytes, not pages touched: an ``empty`` tensor
    counts in full. Linux with glibc only (``available``)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def available() -> bool:
        return _mallinfo2() is not None

    def __enter__(self) -> PeakMemory:
        self._base = self._now()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now() - self._base)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now() - self._base)
            time.sleep(0.001)

    @staticmethod
    def _now() -> int:
        info = _mallinfo2()
        return info.uordblks + info.hblkhd


class _MallInfo2(ctypes.Structure):
    _names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    _fields_ = [(name, ctypes.c_size_t) for name in _names]


def _mallinfo2() -> _MallInfo2 | None:
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return None
    fn.restype = _MallInfo2
    return fn()

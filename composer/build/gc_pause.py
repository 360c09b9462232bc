"""Python's cyclic garbage collector, paused while a build or a read allocates many objects.

A build makes thousands of small objects (modules, dicts, tensors) that live on; each of them
triggers and lengthens collections that find nothing to free. Paused for the duration (and
restored afterwards, also on error), a 10,000-block build spends its time building.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic collection inside; the collector's state as it was afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

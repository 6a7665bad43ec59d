"""Pausing Python's cyclic garbage collector through a burst of allocations.

A flush pass builds hundreds of thousands of small containers that all live until its transaction
commits (a row list and a daily entry per item, a tuple per record). Each of them counts towards the
collector's thresholds, so it runs over and over during the pass and traverses every container built so
far, none of which is garbage yet: measured on a 100,000-item batch of view drains, the collector took
more than half of ``add_drains``' time (docs/benchmarks.md). Reference counting still frees everything
at once; only cycles wait until the pause ends, and the pass creates none.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_was_enabled = False


@contextmanager
def paused() -> Iterator[None]:
    """The collector off until the outermost of overlapping pauses ends (then as it was before)."""
    global _depth, _was_enabled
    if _depth == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _was_enabled:
            gc.enable()

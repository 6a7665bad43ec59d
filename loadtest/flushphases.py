"""Where a flush pass goes: the flush part's rounds (loadtest/flushbench.py) with a timer around each step.

    python -m loadtest.flushphases [--flush-items 100000] [--runs 3]

Private Redis and Postgres as ``make bench`` starts them, this process pinned to the CPU they share (as
the flush part). Each step of ``Flusher.drain`` is wrapped in a timer (the store's capture and drain
reads, ``add_drains``, the Postgres transaction and its content_daily part, ``finish_batch``, unique
viewers, the record sweep); printed: each round's flusher and reference seconds and their ratio, each
step's seconds per round, and Redis's costliest commands over the run (``INFO commandstats``; the fill
of each round's items through the view buffer included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flusher.flusher as flusher_module
import flusher.writer as writer_module
from daemon.settings import Settings
from daemon.store.flush import FlushStore
from loadtest import flushbench
from loadtest.procs import CPUS
from loadtest.servers import Backends

SECONDS: dict[str, float] = defaultdict(float)
STEPS = [
    (FlushStore, "capture_batches", "Redis: capture_batch"),
    (FlushStore, "batch_drains", "Redis: the captured view drains (LRANGE)"),
    (flusher_module, "add_drains", "Python: the drains summed into rows"),
    (flusher_module, "write_batches", "Postgres: the transaction (records built in it)"),
    (writer_module, "_write_daily", "  of which content_daily"),
    (flusher_module.Flusher, "finish", "Redis: finish_batch (TTLs given back)"),
    (flusher_module.Flusher, "flush_unique_viewers", "unique viewers"),
    (flusher_module.Flusher, "sweep_records", "the record sweep"),
    (flusher_module.Flusher, "drain", "the whole drain"),
]


def _timed(owner: Any, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)
    if asyncio.iscoroutinefunction(original):

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                SECONDS[label] += time.perf_counter() - started

    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                SECONDS[label] += time.perf_counter() - started

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flush-items", type=int, default=flushbench.ITEMS)
    parser.add_argument("--runs", type=int, default=3)
    ns = parser.parse_args()
    for owner, name, label in STEPS:
        _timed(owner, name, label)
    os.sched_setaffinity(0, {CPUS.client})
    workdir = Path(tempfile.mkdtemp(prefix="engagementd-flushphases-"))
    os.chmod(workdir, 0o755)
    backends = Backends(workdir)
    try:
        res: dict[str, Any] = {"rounds": []}
        asyncio.run(flushbench._rounds(ns, Settings.from_env(backends.env), res))
        for row in res["rounds"]:
            flusher_s, reference_s = row["flusher"]["seconds"], row["reference"]["seconds"]
            ratio = row["ratio"]
            print(f"round {row['round']}: flusher {flusher_s:.2f} s, reference {reference_s:.2f} s", end="")
            print(f", ratio {ratio:.3f}")
        for _, _, label in STEPS:
            print(f"{label:50s} {SECONDS[label] / ns.runs:7.3f} s per round")
        stats = backends.redis.info("commandstats")
        for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:12]:
            command = name.removeprefix("cmdstat_")
            print(f"{command:24s} calls {v['calls']:9d}  usec {v['usec']:10d}  per call {v['usec_per_call']}")
    finally:
        backends.stop()


if __name__ == "__main__":
    main()

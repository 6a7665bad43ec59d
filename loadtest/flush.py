"""flush: one ``engagementd flusher --once``, its reported rows checked against Postgres's row writes."""

from __future__ import annotations

import re
import time
from typing import Any

from loadtest.procs import log, poll_until, run_cli
from loadtest.servers import Backends


def flush_once(backends: Backends) -> dict[str, Any]:
    """Run the flusher once; the rows it reports and the content_counters writes Postgres counted."""
    before = backends.counters_writes()
    t0 = time.monotonic()
    output = run_cli(["flusher", "--once"], backends.env)
    elapsed = time.monotonic() - t0
    m = re.search(r"flushed (\d+) batches, (\d+) rows", output)
    rows = int(m.group(2)) if m else None
    # Postgres publishes a backend's table statistics when it exits; the flusher's have just exited.
    delta = poll_until(lambda: (backends.counters_writes() - before) or None, 5, 0.05) or 0
    if rows is not None and delta < rows:
        delta = (
            poll_until(lambda: d if (d := backends.counters_writes() - before) >= rows else None, 5) or delta
        )
    log(f"flusher --once: reported {rows} rows, content_counters writes {delta}, {elapsed:.1f}s")
    return {
        "rows_reported": rows,
        "content_counters_writes": delta,
        "seconds": round(elapsed, 2),
        "output_tail": output.strip().splitlines()[-3:],
    }

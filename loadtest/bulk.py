"""bulk: events/s through ``POST /api/v1/views/batch``, for one body shape or all four (the matrix).

A body shape is ``items`` (``mixed``: ~35% with user_id, ~50% with watch_seconds; ``ids``: content_id
only) and ``ids`` (``uniform`` over 100,000 ids, unseeded as before; ``zipf``: s = 1.1 over 1,000,000 ids,
seeded with the round number, so round r sends the same ids in every run of the harness).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from loadtest.bodies import IDS, default_pool, ingest_token, write_bodies
from loadtest.httpc import Http, wait_drained
from loadtest.procs import log
from loadtest.servers import AppServer, Backends
from loadtest.wrkrun import WARMUP_S, run_wrk

BULK_BODIES = 16
BULK_EVENTS = 1_000
BULK_CONNECTIONS = 16
MATRIX = [(items, ids) for items in ("mixed", "ids") for ids in IDS]


class BulkRunner:
    """Writes the bodies of one round, drives them with wrk, and checks the counts in Redis."""

    def __init__(self, ns: argparse.Namespace, backends: Backends, real: AppServer, workdir: Path) -> None:
        self.duration = ns.duration
        self.backends = backends
        self.real = real
        self.bodies_dir = workdir / "bodies"
        self.token = ingest_token(backends.env["ENGAGEMENT_JWT_SECRET"])
        self.client = Http(real.port)
        self.columnar = ns.bulk_columnar

    def write(self, prefix: str, items: str, ids: str, seed: int | None) -> tuple[list[Path], set[str]]:
        return write_bodies(
            self.bodies_dir,
            BULK_BODIES,
            BULK_EVENTS,
            prefix,
            default_pool(ids),
            seed,
            items,
            ids,
            self.columnar,
        )

    def warm_up(self, prefix: str, items: str, ids: str) -> None:
        seed = zipf_seed(ids, 0)
        warm, _ = write_bodies(
            self.bodies_dir, 2, BULK_EVENTS, prefix, default_pool(ids), seed, items, ids, self.columnar
        )
        run_wrk("post_batch.lua", self.real.url, WARMUP_S, BULK_CONNECTIONS, [self.token, *map(str, warm)])
        wait_drained(self.client)

    def round(self, prefix: str, items: str, ids: str, seed: int | None) -> dict[str, Any]:
        paths, distinct = self.write(prefix, items, ids, seed)
        w = self.real.measure(
            "post_batch.lua", self.duration, BULK_CONNECTIONS, [self.token, *map(str, paths)]
        )
        w["events_per_s"] = w["ok_2xx"] * BULK_EVENTS / w["duration_s"]
        w["events_per_server_cpu_s"] = (
            w["ok_2xx"] * BULK_EVENTS / w["server_cpu_s"] if w["server_cpu_s"] else None
        )
        w["distinct_ids"] = len(distinct)
        if seed is not None:
            w["seed"] = seed
        wait_drained(self.client)
        counted = self.backends.views_of(distinct)
        w["views_counted_in_redis"] = counted
        # Up to -c batches may have been in flight when wrk stopped its clock.
        w["count_ok"] = w["ok_2xx"] * BULK_EVENTS <= counted <= (w["ok_2xx"] + BULK_CONNECTIONS) * BULK_EVENTS
        return w

    def close(self) -> None:
        self.client.close()


def zipf_seed(ids: str, r: int) -> int | None:
    """Zipf bodies are seeded (the same ids every run); uniform ones are not, as before the option."""
    return r if ids == "zipf" else None


def summarise(res: dict[str, Any]) -> None:
    rounds = res["rounds"]
    res["events_per_s"] = [w["events_per_s"] for w in rounds]
    res["median_events_per_s"] = statistics.median(res["events_per_s"])
    per_cpu = [w["events_per_server_cpu_s"] for w in rounds if w["events_per_server_cpu_s"]]
    res["median_events_per_server_cpu_s"] = statistics.median(per_cpu) if per_cpu else None
    res["median_distinct_ids"] = statistics.median(w["distinct_ids"] for w in rounds)
    res["valid"] = all(w["non_2xx"] == 0 and w["socket_errors"] == 0 and w["count_ok"] for w in rounds)


def bench_bulk(
    ns: argparse.Namespace,
    backends: Backends,
    real: AppServer,
    workdir: Path,
    out: dict[str, Any],
    key: str = "bulk",
) -> None:
    """The bulk part in the shape the options ask for (``out["bulk"]``); ``key="bulk_users"``: the
    issue-19 shape instead, every event with a user_id, sent as columns (``out["bulk_users"]``)."""
    if key == "bulk_users":
        ns = argparse.Namespace(
            **{**vars(ns), "bulk_items": "users", "bulk_ids": "uniform", "bulk_columnar": True}
        )
    items, ids = ns.bulk_items, ns.bulk_ids
    res: dict[str, Any] = {
        "events_per_body": BULK_EVENTS,
        "bodies": BULK_BODIES,
        "pool": default_pool(ids),
        "items": items,
        "ids": ids,
        "columnar": ns.bulk_columnar,
        "connections": BULK_CONNECTIONS,
        "duration_s": ns.duration,
        "rounds": [],
    }
    out[key] = res
    runner = BulkRunner(ns, backends, real, workdir)
    try:
        log(f"warming up bulk ({items}, {ids}{', columnar' if ns.bulk_columnar else ''})")
        tag = "u" if key == "bulk_users" else "b"  # other item names than the other part's rounds
        runner.warm_up(f"{tag}w-", items, ids)
        for r in range(ns.runs):
            w = runner.round(f"{tag}{r}-", items, ids, zipf_seed(ids, r))
            log(
                f"bulk round {r + 1}: {w['events_per_s']:,.0f} events/s "
                f"({w['requests_per_s']:.0f} batches/s), server CPU share {w['server_cpu_share']:.2f}, "
                f"non-2xx {w['non_2xx']}, counted {w['views_counted_in_redis']}"
            )
            res["rounds"].append(w)
        summarise(res)
    finally:
        runner.close()


def bench_bulk_matrix(
    ns: argparse.Namespace, backends: Backends, real: AppServer, workdir: Path, out: dict[str, Any]
) -> None:
    """All four body shapes, --runs rounds each; rounds interleaved, the first shape rotating per round."""
    combos: list[dict[str, Any]] = [
        {"items": items, "ids": ids, "pool": default_pool(ids), "rounds": []} for items, ids in MATRIX
    ]
    res: dict[str, Any] = {
        "events_per_body": BULK_EVENTS,
        "bodies": BULK_BODIES,
        "connections": BULK_CONNECTIONS,
        "duration_s": ns.duration,
        "runs": ns.runs,
        "combinations": combos,
    }
    out["bulk_matrix"] = res
    runner = BulkRunner(ns, backends, real, workdir)
    try:
        for c, combo in enumerate(combos):
            log(f"warming up bulk ({combo['items']}, {combo['ids']})")
            runner.warm_up(f"mw{c}-", combo["items"], combo["ids"])
        for r in range(ns.runs):
            for k in range(len(combos)):
                c = (r + k) % len(combos)
                combo = combos[c]
                w = runner.round(f"m{c}r{r}-", combo["items"], combo["ids"], zipf_seed(combo["ids"], r))
                log(
                    f"bulk-matrix round {r + 1} {combo['items']}/{combo['ids']}: {w['events_per_s']:,.0f} "
                    f"events/s, {w['events_per_server_cpu_s'] or 0:,.0f} per server CPU-second, "
                    f"CPU share {w['server_cpu_share']:.2f}, {w['distinct_ids']} distinct ids, "
                    f"non-2xx {w['non_2xx']}, counted {w['views_counted_in_redis']}"
                )
                combo["rounds"].append(w)
        for combo in combos:
            summarise(combo)
        res["valid"] = all(combo["valid"] for combo in combos)
    finally:
        runner.close()

"""Batch bodies and ingest tokens for the bulk benchmark, wrk/post_batch.lua and the locustfile.

    python -m loadtest.bodies --out /tmp/bodies --count 16 --events 1000   # writes body-00.msgpack ...
    python -m loadtest.bodies --ids zipf --items ids --seed 1              # Zipf ids, content_id only
    python -m loadtest.bodies --token                                      # prints an ingest token

Events (``items``): ``mixed`` (the default) — about a third carry a ``user_id`` and about half a
``watch_seconds``; ``ids`` — a ``content_id`` and nothing else; ``users`` — every event a ``user_id`` of
100,000 users, on 200 items (the content ids' pool and shape do not apply).
``--columnar`` writes each body as one object of columns (``{"content_id": [...], "user_id": [...]}``,
null where an event has no such field) instead of an array of items.
Content ids (``ids``, ``<prefix><n>``): ``uniform`` (the default) over a pool of 100,000; ``zipf`` —
Zipf-like, P(n) ∝ 1/(n+1)^1.1, over a pool of 1,000,000 (``<prefix>0`` the hottest), drawn by
inverse-CDF sampling over precomputed cumulative weights; with a seed the bodies are reproducible.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import itertools
import os
import random
import time
from array import array
from pathlib import Path

import msgpack

POOL = 100_000
ZIPF_POOL = 1_000_000
ZIPF_S = 1.1
ITEMS = ("mixed", "ids", "users")
USERS_ITEMS = 200  # items of the "users" shape ...
USERS = 100_000  # ... and its users
IDS = ("uniform", "zipf")


def default_pool(ids: str = "uniform") -> int:
    return ZIPF_POOL if ids == "zipf" else POOL


@functools.lru_cache(maxsize=4)
def zipf_cdf(pool: int, s: float = ZIPF_S) -> array:
    """Cumulative weights of ranks 1..pool with weight 1/rank^s (computed once per pool and s)."""
    return array("d", itertools.accumulate(rank**-s for rank in range(1, pool + 1)))


def zipf_index(rng: random.Random, cdf: array) -> int:
    """An index in [0, len(cdf)): index 0 (rank 1) the most likely (inverse-CDF sampling)."""
    return min(bisect.bisect_right(cdf, rng.random() * cdf[-1]), len(cdf) - 1)


def make_events(
    n: int,
    prefix: str = "b-",
    pool: int = POOL,
    rng: random.Random | None = None,
    items: str = "mixed",
    ids: str = "uniform",
) -> list[dict]:
    if items not in ITEMS or ids not in IDS:
        raise ValueError(f"items must be one of {ITEMS} and ids one of {IDS}")
    rng = rng or random.Random()
    cdf = zipf_cdf(pool) if ids == "zipf" else None
    events: list[dict] = []
    for _ in range(n):
        if items == "users":
            events.append(
                {"content_id": f"{prefix}{rng.randrange(USERS_ITEMS)}", "user_id": f"u{rng.randrange(USERS)}"}
            )
            continue
        index = zipf_index(rng, cdf) if cdf is not None else rng.randrange(pool)
        event: dict[str, object] = {"content_id": f"{prefix}{index}"}
        if items == "mixed":
            if rng.random() < 0.35:
                event["user_id"] = f"u{rng.randrange(1_000_000)}"
            if rng.random() < 0.5:
                event["watch_seconds"] = rng.randint(1, 600)
        events.append(event)
    return events


def write_bodies(
    out: Path,
    count: int,
    events: int,
    prefix: str = "b-",
    pool: int = POOL,
    seed: int | None = None,
    items: str = "mixed",
    ids: str = "uniform",
    columnar: bool = False,
) -> tuple[list[Path], set[str]]:
    """Write ``count`` msgpack bodies of ``events`` events each; the files and the distinct ids used."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    distinct: set[str] = set()
    for i in range(count):
        batch = make_events(events, prefix, pool, rng, items, ids)
        distinct.update(e["content_id"] for e in batch)
        path = out / f"{prefix.strip('-') or 'body'}-{i:02d}.msgpack"
        path.write_bytes(msgpack.packb(columns(batch) if columnar else batch))
        paths.append(path)
    return paths, distinct


def columns(events: list[dict]) -> dict[str, list]:
    """The columnar body of ``events``: one array per field, null where an event lacks it."""
    names = sorted({name for event in events for name in event}, key=lambda n: n != "content_id")
    return {name: [event.get(name) for event in events] for name in names}


def ingest_token(secret: str | None = None, ttl_s: int = 3600, sub: str = "loadtest") -> str:
    """An HS256 token with scope ``ingest``, signed with ENGAGEMENT_JWT_SECRET (or ``secret``)."""
    import jwt

    secret = secret if secret is not None else os.environ.get("ENGAGEMENT_JWT_SECRET", "")
    if not secret:
        raise SystemExit(
            "ENGAGEMENT_JWT_SECRET is not set: the ingest token needs the service's HS256 secret"
        )
    now = int(time.time())
    return jwt.encode(
        {"sub": sub, "scope": "ingest", "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/bodies"))
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--prefix", default="b-")
    parser.add_argument("--items", choices=ITEMS, default="mixed")
    parser.add_argument("--ids", choices=IDS, default="uniform")
    parser.add_argument(
        "--pool", type=int, default=None, help=f"ids in the pool (default {POOL:,}; {ZIPF_POOL:,} with zipf)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random ids (default: fresh)")
    parser.add_argument("--columnar", action="store_true", help="bodies as objects of columns")
    parser.add_argument("--token", action="store_true", help="print an ingest token and exit")
    args = parser.parse_args()
    if args.token:
        print(ingest_token())
        return
    pool = args.pool if args.pool is not None else default_pool(args.ids)
    paths, ids = write_bodies(
        args.out, args.count, args.events, args.prefix, pool, args.seed, args.items, args.ids, args.columnar
    )
    for p in paths:
        print(p)
    print(f"{len(paths)} bodies, {args.events} events each, {len(ids)} distinct content ids")


if __name__ == "__main__":
    main()

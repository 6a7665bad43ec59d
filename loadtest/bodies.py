"""Batch bodies and ingest tokens for the bulk benchmark, wrk/post_batch.lua and the locustfile.

    python -m loadtest.bodies --out /tmp/bodies --count 16 --events 1000   # writes body-00.msgpack ...
    python -m loadtest.bodies --token                                      # prints an ingest token

Events: content ids drawn uniformly from a pool (100,000 by default, ``<prefix><n>``); about a third
carry a ``user_id`` and about half a ``watch_seconds``.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import msgpack

POOL = 100_000


def make_events(n: int, prefix: str = "b-", pool: int = POOL, rng: random.Random | None = None) -> list[dict]:
    rng = rng or random.Random()
    events: list[dict] = []
    for _ in range(n):
        event: dict[str, object] = {"content_id": f"{prefix}{rng.randrange(pool)}"}
        if rng.random() < 0.35:
            event["user_id"] = f"u{rng.randrange(1_000_000)}"
        if rng.random() < 0.5:
            event["watch_seconds"] = rng.randint(1, 600)
        events.append(event)
    return events


def write_bodies(
    out: Path, count: int, events: int, prefix: str = "b-", pool: int = POOL, seed: int | None = None
) -> tuple[list[Path], set[str]]:
    """Write ``count`` msgpack bodies of ``events`` events each; the files and the distinct ids used."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    ids: set[str] = set()
    for i in range(count):
        batch = make_events(events, prefix, pool, rng)
        ids.update(e["content_id"] for e in batch)
        path = out / f"{prefix.strip('-') or 'body'}-{i:02d}.msgpack"
        path.write_bytes(msgpack.packb(batch))
        paths.append(path)
    return paths, ids


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
    parser.add_argument("--pool", type=int, default=POOL)
    parser.add_argument("--token", action="store_true", help="print an ingest token and exit")
    args = parser.parse_args()
    if args.token:
        print(ingest_token())
        return
    paths, ids = write_bodies(args.out, args.count, args.events, args.prefix, args.pool)
    for p in paths:
        print(p)
    print(f"{len(paths)} bodies, {args.events} events each, {len(ids)} distinct content ids")


if __name__ == "__main__":
    main()

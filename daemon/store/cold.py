"""Cold keys: loaded from Postgres when a script finds them missing (docs/redis-memory.md).

A script that needs a cold key Redis does not hold answers ``{"unknown", key, token, ...}`` and changes
nothing (lua/lib/cold.lua); the token is the key's load placeholder, which a seed must present.
``ColdLoader.seeds`` reads those records from Postgres, one query per kind of key, and packs them as
the seed blob the script takes as its last argument; ``call`` and ``call_many`` run a script until it
answers, re-sending it with the seeds, a few times at most.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import asyncpg
import msgpack

from daemon import keys
from daemon.errors import ColdLoadError
from daemon.metrics import Metrics
from daemon.settings import Settings
from lua import ArgT, KeyT, LuaScript

ATTEMPTS = 5  # script calls per operation: a key evicted again between the load and the call retries

KINDS = keys.COLD_KINDS  # the kind of a cold key (the name after the hash tag) -> its name in metrics

_COUNTS = f"""
SELECT i.content_id, {", ".join(f"c.{name}" for name in keys.COUNTERS)},
       EXISTS (SELECT 1 FROM content_unique_viewers u WHERE u.content_id = i.content_id AND u.hll IS NOT NULL)
           AS uva,
       (SELECT max(d.day) FROM content_unique_viewers_daily d
        WHERE d.content_id = i.content_id AND d.hll IS NOT NULL) AS uvd
FROM unnest($1::text[]) AS i (content_id) LEFT JOIN content_counters c ON c.content_id = i.content_id
"""
_CREATORS = """
SELECT i.creator_id, c.subscribers
FROM unnest($1::text[]) AS i (creator_id) LEFT JOIN creator_counters c ON c.creator_id = i.creator_id
"""
_LIKES = """
SELECT i.content_id, i.user_id, l.value
FROM unnest($1::text[], $2::text[]) AS i (content_id, user_id)
LEFT JOIN likes l ON l.user_id = i.user_id AND l.content_id = i.content_id
"""
_SUBSCRIPTIONS = """
SELECT i.creator_id, i.user_id, s.user_id IS NOT NULL AS subscribed
FROM unnest($1::text[], $2::text[]) AS i (creator_id, user_id)
LEFT JOIN creator_subscriptions s ON s.user_id = i.user_id AND s.creator_id = i.creator_id
"""
_VIEWERS = "SELECT content_id, hll FROM content_unique_viewers WHERE content_id = ANY($1::text[])"
# Days travel as text: a date[] parameter costs asyncpg a type introspection (~30 ms) on each new
# connection, which the first view of an item after a restart would wait for.
_DAILY_VIEWERS = """
SELECT d.content_id, d.day, d.hll FROM content_unique_viewers_daily d
JOIN unnest($1::text[], $2::text[]) AS i (content_id, day)
  ON d.content_id = i.content_id AND d.day = i.day::date
"""


@dataclass(frozen=True, slots=True)
class Unknown:
    """A script's "unknown" answer: the keys it found missing, each with its load token."""

    tokens: dict[str, str]  # key name -> token

    @property
    def names(self) -> list[str]:
        return list(self.tokens)


def unknown_of(result: Any) -> Unknown | None:
    if type(result) is list and result and result[0] in ("unknown", b"unknown"):
        decode = [v.decode() if isinstance(v, bytes) else v for v in result[1:]]
        return Unknown(dict(zip(decode[::2], decode[1::2], strict=True)))
    return None


def parse(name: str) -> tuple[str, str]:
    """'eng:{s:3}:lk:c1|u1' -> ('lk', 'c1|u1')."""
    rest = name[name.index("}:") + 2 :]
    kind, _, ident = rest.partition(":")
    return kind, ident


@dataclass(slots=True)
class _Wanted:
    """The missing keys of several calls, grouped by kind: what the loader queries."""

    counts: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # id -> key names
    creators: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    likes: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    subscriptions: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    viewers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    daily: dict[tuple[str, date], list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str) -> None:
        kind, ident = parse(name)
        if kind == "c":
            self.counts[ident].append(name)
        elif kind == "cr":
            self.creators[ident].append(name)
        elif kind in ("lk", "sb"):
            target, _, user = ident.partition("|")
            (self.likes if kind == "lk" else self.subscriptions)[(target, user)].append(name)
        elif kind == "uv":
            self.viewers[ident].append(name)
        elif kind == "uvd":
            day, _, content_id = ident.partition(":")
            self.daily[(content_id, keys.day_date(day))].append(name)
        else:
            raise ValueError(f"not a cold key: {name!r}")


class ColdLoader:
    """Reads the records behind missing cold keys from Postgres and packs them as seeds."""

    def __init__(
        self, settings: Settings, pool: Callable[[], Awaitable[asyncpg.Pool]], metrics: Metrics
    ) -> None:
        self._pool = pool
        self.metrics = metrics
        self._hit_counters = {kind: metrics.cold_hits.labels(kind=kind) for kind in set(KINDS.values())}
        self._ttl = {
            "c": settings.counts_idle_ttl_s,
            "cr": settings.counts_idle_ttl_s,
            "uv": settings.counts_idle_ttl_s,
            "lk": settings.state_idle_ttl_s,
            "sb": settings.state_idle_ttl_s,
            "uvd": settings.unique_viewers_daily_ttl_s,
        }

    def count_hits(self, needed: Needed, unknowns: Sequence[Unknown]) -> None:
        if not unknowns:  # the hot path: every key found (a like: 1.5 -> 0.8 us)
            for kind, n in needed.items():
                self._hit_counters[kind].inc(n)
            return
        hits: dict[str, int] = {}
        _hits(needed, unknowns, hits)
        self.add_hits(hits)

    def add_hits(self, hits: dict[str, int]) -> None:
        for kind, n in hits.items():
            self._hit_counters[kind].inc(n)

    def ttl(self, name: str) -> int:
        return self._ttl[parse(name)[0]]

    async def values(self, names: Sequence[str], conn: asyncpg.Connection | None = None) -> dict[str, Any]:
        """key name -> its value as Postgres has it: a flat field/value list for a hash, a string, the
        bytes of an HLL, or "" when Postgres has no HLL (the key stays absent). ``conn``: read on this
        connection (a caller holding one in a transaction must not wait for a second one)."""
        started = time.perf_counter()
        if conn is None:
            pool = await self._pool()
            async with pool.acquire() as own:
                out = await self.read(own, names)
        else:
            out = await self.read(conn, names)
        self.metrics.cold_load_seconds.observe(time.perf_counter() - started)
        for name in names:
            self.metrics.cold_loads.labels(kind=KINDS[parse(name)[0]]).inc()
        return out

    async def read(self, conn: asyncpg.Connection, names: Sequence[str]) -> dict[str, Any]:
        """``values`` on ``conn``, without counting loads (reconcile reads what Redis holds)."""
        wanted = _Wanted()
        for name in names:
            wanted.add(name)
        out: dict[str, Any] = {}
        if wanted.counts:
            await _counts(conn, wanted.counts, out)
        if wanted.creators:
            for row in await conn.fetch(_CREATORS, list(wanted.creators)):
                for name in wanted.creators[row[0]]:
                    out[name] = ["subscribers", str(int(row[1] or 0))]
        for query, pairs, value in (
            (_LIKES, wanted.likes, lambda v: str(int(v or 0))),
            (_SUBSCRIPTIONS, wanted.subscriptions, lambda v: "1" if v else "0"),
        ):
            if pairs:
                ids = list(pairs)
                rows = await conn.fetch(query, [t for t, _ in ids], [u for _, u in ids])
                for target, user, found in rows:
                    for name in pairs[(target, user)]:
                        out[name] = value(found)
        if wanted.viewers:
            found = dict(await conn.fetch(_VIEWERS, list(wanted.viewers)))
            for content_id, names_of in wanted.viewers.items():
                for name in names_of:
                    out[name] = found.get(content_id) or ""
        if wanted.daily:
            pairs = list(wanted.daily)
            rows = await conn.fetch(_DAILY_VIEWERS, [c for c, _ in pairs], [d.isoformat() for _, d in pairs])
            found_daily = {(r[0], r[1]): r[2] for r in rows}
            for pair, names_of in wanted.daily.items():
                for name in names_of:
                    out[name] = found_daily.get(pair) or ""
        return out

    def pack(
        self, tokens: dict[str, str], values: dict[str, Any], ttls: dict[str, int] | None = None
    ) -> bytes:
        """The seed blob of lua/lib/cold.lua: {k = {key = {idle TTL, value, token}}}; ``ttls`` overrides
        the idle TTL of some keys."""
        ttls = ttls or {}
        seeds = {"k": {n: [ttls.get(n) or self.ttl(n), v, tokens[n]] for n, v in values.items()}}
        return msgpack.packb(seeds, use_bin_type=False)  # Redis's cmsgpack has no bin type: HLLs as str

    async def seeds(self, unknowns: Sequence[Unknown], conn: asyncpg.Connection | None = None) -> list[bytes]:
        """One seed blob per "unknown" answer, from one Postgres read for all of them."""
        values = await self.values(sorted({n for u in unknowns for n in u.names}), conn)
        return [self.pack(u.tokens, {n: values[n] for n in u.names}) for u in unknowns]


def counts_seed(row: Any) -> list[str]:
    """An item's counts hash from a row with the COUNTERS (None: no row), ``uva`` and ``uvd``."""
    flat: list[str] = []
    for name in keys.COUNTERS:
        if row[name]:
            flat += (name, str(row[name]))
    if not flat:
        flat = ["views", "0"]  # a hash needs a field: the item exists in Redis with zeros
    if row["uva"]:
        flat += ("uva", "1")
    if row["uvd"] is not None:
        flat += ("uvd", row["uvd"].strftime("%Y%m%d"))
    return flat


async def _counts(conn: asyncpg.Connection, wanted: dict[str, list[str]], out: dict[str, Any]) -> None:
    for row in await conn.fetch(_COUNTS, list(wanted)):
        flat = counts_seed(row)
        for name in wanted[row[0]]:
            out[name] = flat


Call = tuple[Sequence[KeyT], Sequence[ArgT]]
Needed = dict[str, int]  # kind (KINDS values) -> cold keys of that kind a call uses


def _hits(needed: Needed, unknowns: Sequence[Unknown], into: dict[str, int]) -> None:
    """Add to ``into`` the cold keys of ``needed`` a call found in Redis: all but those it loaded."""
    loaded: dict[str, int] = defaultdict(int)
    for unknown in unknowns:
        for name in unknown.names:
            loaded[KINDS[parse(name)[0]]] += 1
    for kind, n in needed.items():
        hits = n - loaded.get(kind, 0)
        if hits > 0:
            into[kind] = into.get(kind, 0) + hits


async def call(
    script: LuaScript,
    client: Any,
    call_keys: Sequence[KeyT],
    args: Sequence[ArgT],
    loader: ColdLoader,
    needed: Needed,
    conn: asyncpg.Connection | None = None,
) -> Any:
    """``script(*args, seeds)`` until it answers something other than "unknown". ``conn``: the
    Postgres connection to load on (see ``ColdLoader.values``)."""
    seeds: bytes | str = ""
    unknowns: list[Unknown] = []
    for _ in range(ATTEMPTS):
        result = await script(client, call_keys, [*args, seeds])
        unknown = unknown_of(result)
        if unknown is None:
            loader.count_hits(needed, unknowns)
            return result
        unknowns.append(unknown)
        (seeds,) = await loader.seeds([unknown], conn)
    raise ColdLoadError(f"{script.name}: cold keys still missing after {ATTEMPTS} loads")


async def call_many(
    script: LuaScript,
    client: Any,
    calls: Sequence[Call],
    loader: ColdLoader,
    needed: Sequence[Needed],
    *,
    raw: bool = False,
    conn: asyncpg.Connection | None = None,
) -> list[Any]:
    """``call`` for many calls, pipelined: every round's "unknown" answers are loaded with one Postgres
    read and re-sent together. Errors are returned in place of results (``LuaScript.call_many``)."""
    results = await script.call_many(client, [(k, [*a, ""]) for k, a in calls], raw=raw)
    met: dict[int, list[Unknown]] = defaultdict(list)
    for _ in range(ATTEMPTS - 1):
        unknowns = {i: u for i, r in enumerate(results) if (u := unknown_of(r)) is not None}
        if not unknowns:
            break
        for i, unknown in unknowns.items():
            met[i].append(unknown)
        seeds = await loader.seeds(list(unknowns.values()), conn)
        again = [(calls[i][0], [*calls[i][1], s]) for i, s in zip(unknowns, seeds, strict=True)]
        for i, result in zip(unknowns, await script.call_many(client, again, raw=raw), strict=True):
            results[i] = result
    error = ColdLoadError(f"{script.name}: cold keys still missing after {ATTEMPTS} loads")
    hits: dict[str, int] = {}
    for i, result in enumerate(results):
        if unknown_of(result) is not None:
            results[i] = error
        elif not isinstance(result, Exception):
            _hits(needed[i], met.get(i, ()), hits)
    loader.add_hits(hits)
    return results

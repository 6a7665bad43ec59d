"""Drains: one shard's increments (and user ids) packed for one ``apply_views`` call.

A cut of the view buffer is grouped by shard here, split into calls of at most
``MAX_ITEMS_PER_CALL`` items, and each call packed once as msgpack, so that a retry sends it as is.
A drain is named by its sender (``process``: an api buffer, a consumer batch) and a sequence number
counted per sender and shard from 1: ``apply_views.lua`` keeps one mark per sender and shard, so a
retried drain counts once without a key per drain (docs/redis-memory.md).

The other half of the format is here too: ``apply_views.lua`` keeps each applied drain's increments as
one entry of the shard's ``vdelta`` list (views, watch seconds and playback signals: three msgpack maps,
concatenated) instead of adding them to the ``delta`` hash item by item; ``capture_batch.lua`` renames
the list to ``vbatch`` with the hash. The entries are binary, so they are read with a command whose reply
is not decoded (``read_drains``), and summed into a flush batch's rows in Python (``add_drains``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from zlib import crc32

import msgpack
from redis.client import NEVER_DECODE

from daemon import keys
from daemon.settings import Settings

log = logging.getLogger(__name__)

# Upper bound of items in one script call, so that one call never blocks Redis for long.
MAX_ITEMS_PER_CALL = 1000
_EMPTY_MAP = msgpack.packb({})
T = TypeVar("T")

Signals = dict[str, dict[str, int]]  # counter -> {content_id: n}
# content_id -> the distinct user ids that viewed it in this drain: one as a string, several as a list
Viewers = dict[str, str | list[str]]


@dataclass(slots=True)
class Drain:
    """One apply_views call: a shard's increments under one drain id, packed once, retried as is."""

    shard: int
    process: str  # the sender: an api buffer's id, a consumer batch's id
    seq: int  # counted per sender and shard from 1
    views: dict[str, int]
    watch: dict[str, int]
    # playback signals: counter (completions, skips, replays) -> {content_id: n}; usually empty
    signals: Signals = field(default_factory=dict)
    viewers: Viewers = field(default_factory=dict)  # user ids for the unique viewers HLLs
    day: str = ""  # UTC day (yyyymmdd) of the daily HLLs: the day of the cut, kept by retries
    bucket: int = 0  # 5-minute trending bucket of the cut (keys.trend_bucket); 0: none
    total_views: int = field(init=False)
    items: int = field(init=False)  # entries it holds, for the buffer bound
    needed: dict[str, int] = field(init=False)  # cold keys it uses, by kind (hit metrics)
    _args: tuple[bytes | str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.total_views = sum(self.views.values())
        self.items = len(self.views) + sum(map(len, self.signals.values()))
        self.needed = {"counts": len(self.views.keys() | self.watch.keys()), "viewers": 2 * len(self.viewers)}
        self._args = (
            self.process,
            str(self.seq),
            msgpack.packb(self.views),
            msgpack.packb(self.watch),
            msgpack.packb(self.signals) if self.signals else _EMPTY_MAP,
            msgpack.packb(self.viewers) if self.viewers else _EMPTY_MAP,
            keys.tag(self.shard),
            f"{self.day}:{self.bucket}" if self.bucket else self.day,
        )

    def call(self, settings: Settings) -> tuple[list[str], list[str | int | bytes]]:
        """``apply_views``'s KEYS and ARGV (without the seeds, which the store adds when needed)."""
        args = [*self._args, settings.view_delta_max_drains, settings.drain_marker_ttl_s]
        return drain_keys(self.shard), args


def drain_keys(shard: int) -> list[str]:
    """The KEYS of an ``apply_views`` call on ``shard``."""
    return [
        keys.delta_key(shard),
        keys.vdelta_key(shard),
        keys.uv_touch_key(shard),
        keys.uv_all_touch_key(shard),
        keys.rec_key(shard),
        keys.recexp_key(shard),
        keys.dirty_key(shard),
    ]


def mark_of(call: tuple[list[str], list[str | int | bytes]]) -> tuple[int, str]:
    """(shard, process) of the drain mark a ``Drain.call`` writes (to forget it, api/drains users)."""
    call_keys, args = call
    rec = call_keys[4]  # eng:{s:N}:rec
    process = args[0]
    return int(rec[rec.index("{s:") + 3 : rec.index("}")]), process.decode() if isinstance(
        process, bytes
    ) else str(process)


def group_by_shard(counts: dict[str, T], shards: int) -> list[tuple[int, dict[str, T]]]:
    """Split ``counts`` by shard (the same crc32 as daemon.keys.shard_of, inlined: this loop runs
    for every distinct item of every cut)."""
    groups: list[dict[str, T]] = [{} for _ in range(shards)]
    codes = map(crc32, map(str.encode, counts))  # (map runs in C)
    for (content_id, n), code in zip(counts.items(), codes, strict=True):
        groups[code % shards][content_id] = n
    return [(shard, group) for shard, group in enumerate(groups) if group]


def _chunks(views: dict[str, int]) -> list[dict[str, int]]:
    if len(views) <= MAX_ITEMS_PER_CALL:
        return [views]
    items = list(views.items())
    step = MAX_ITEMS_PER_CALL
    return [dict(items[i : i + step]) for i in range(0, len(items), step)]


Call = tuple[dict[str, int], dict[str, int], Signals, Viewers]


def split(views: dict[str, int], watch: dict[str, int], signals: Signals, viewers: Viewers) -> list[Call]:
    """One shard's increments as calls of at most MAX_ITEMS_PER_CALL distinct items each (an item's
    viewers are a subset of its views: they follow them)."""
    ids = set(views).union(watch, *signals.values()) if signals or len(watch) > len(views) else views
    if len(ids) <= MAX_ITEMS_PER_CALL:
        return [(views, watch, signals, viewers)]
    if not signals and watch.keys() <= views.keys():  # views only (the usual shape): as before
        return [
            (
                chunk,
                {c: watch[c] for c in chunk if c in watch},
                {},
                {c: viewers[c] for c in chunk if c in viewers} if viewers else {},
            )
            for chunk in _chunks(views)
        ]
    ordered = list(ids)
    out = []
    for i in range(0, len(ordered), MAX_ITEMS_PER_CALL):
        part = ordered[i : i + MAX_ITEMS_PER_CALL]
        sub: Signals = {}
        for counter, counts in signals.items():
            found = {c: counts[c] for c in part if c in counts}
            if found:
                sub[counter] = found
        out.append(
            (
                {c: views[c] for c in part if c in views},
                {c: watch[c] for c in part if c in watch},
                sub,
                {c: viewers[c] for c in part if c in viewers} if viewers else {},
            )
        )
    return out


# -- applied drains, as the flusher and reconcile read them -----------------------------------------

COUNTER_INDEX = {name: i for i, name in enumerate(keys.COUNTERS)}


async def read_drains(redis: Any, list_keys: Sequence[str]) -> list[list[bytes]]:
    """The drains held by each list of ``list_keys`` (vdelta or vbatch keys), in one pipelined round
    trip."""
    if not list_keys:
        return []
    pipe = redis.pipeline(transaction=False)
    for key in list_keys:
        pipe.execute_command("LRANGE", key, 0, -1, **{NEVER_DECODE: []})
    return list(await pipe.execute())


Daily = dict[tuple[str, str], list[int]]  # (content_id, yyyymmdd) -> [views, watch seconds]
DAILY_COUNTERS = {"views": 0, "watch_seconds": 1}  # counted per day too (content_daily)
VIEWS_INDEX, WATCH_INDEX = COUNTER_INDEX["views"], COUNTER_INDEX["watch_seconds"]
DAILY_FIELDS = {"dv": 0, "dw": 1}  # "dv:<day>:<id>" / "dw:<day>:<id>" in the delta hash (apply_views.lua)


def unpack_entry(drain: bytes) -> tuple[str | None, list[tuple[str, dict[str, int]]]]:
    """The day (yyyymmdd; None in an entry written before daily counts) and the (counter, {content_id:
    increment}) of one drain entry: views, watch seconds, then its playback signals."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(drain)
    parts = list(unpacker)
    day = parts.pop(0) if len(parts) == 4 else None
    views, watch, signals = parts  # exactly three maps after the day: anything else is a bug, raised
    return day, [("views", views), ("watch_seconds", watch), *signals.items()]


def unpack(drain: bytes) -> list[tuple[str, dict[str, int]]]:
    """(counter, {content_id: increment}) of one drain entry (see ``unpack_entry``)."""
    return unpack_entry(drain)[1]


def add_drains(rows: dict[str, list[int]], drains: Iterable[bytes], daily: Daily, today: str) -> None:
    """Add the increments of captured drains to ``rows`` ({content_id: [views, likes, ...]}), and their
    views and watch seconds to ``daily`` by the drain's day (``today`` for an entry without one).

    Per item, as few Python steps as the sums need (a flush reads up to hundreds of thousands of items):
    the drains are summed per day and counter first (the first drain's map copied whole, as a batch
    often holds one drain per day), then each day's items get their rows and daily entries in one
    comprehension each, those not met before, and the others are added to one by one."""
    sums: dict[str, dict[int, dict[str, int]]] = {}  # day -> counter index -> {content_id: increment}
    for drain in drains:
        day, parts = unpack_entry(drain)
        of_day = sums.setdefault(day or today, {})
        for counter, increments in parts:
            index = COUNTER_INDEX.get(counter)
            if index is None:
                log.error("unknown counter %r in a view drain kept out of Postgres", counter)
                continue
            acc = of_day.get(index)
            if acc is None:
                of_day[index] = dict(increments)
            else:
                get = acc.get
                for content_id, n in increments.items():
                    acc[content_id] = get(content_id, 0) + n
    zeros = [0] * len(keys.COUNTERS)
    for day, of_day in sums.items():
        ids = set().union(*of_day.values())
        rows.update({c: zeros.copy() for c in ids.difference(rows)})
        for index, acc in of_day.items():
            for content_id, n in acc.items():
                rows[content_id][index] += n
        views, watch = of_day.get(VIEWS_INDEX, {}), of_day.get(WATCH_INDEX, {})
        if not (views or watch):
            continue
        vget, wget = views.get, watch.get
        ids = views.keys() | watch.keys()
        if daily and any(d == day for _, d in daily):
            for content_id in ids:
                entry = daily.setdefault((content_id, day), [0, 0])
                entry[0] += vget(content_id, 0)
                entry[1] += wget(content_id, 0)
        else:
            daily.update({(c, day): [vget(c, 0), wget(c, 0)] for c in ids})

"""Redis key layout (docs/design.md, decision 1; docs/redis-memory.md for what may expire).

Every key of one content item carries the hash tag ``{s:N}``, N = crc32(content_id) mod shards, so
that one Lua script can change the counts, the states, the pending deltas and the records of an item
atomically on a single Redis and unchanged on Redis Cluster. Creator keys use the creator id's shard,
watch-history keys the user id's.

Cold state (a copy of Postgres; a TTL once Postgres has every change, so it may expire or be evicted;
missing means unknown and is loaded from Postgres, see daemon/store/cold.py):

==============================  ======  =================================================
key                             type    what
==============================  ======  =================================================
eng:{s:N}:c:<content_id>        hash    the item's live counts: views, likes, dislikes,
                                        comments, shares, watch_seconds, completions, skips,
                                        replays (absent field: 0); uva: 1 when Postgres has
                                        its all-time viewers HLL; uvd: the last day (yyyymmdd)
                                        Postgres has a daily viewers HLL of
eng:{s:N}:cr:<creator_id>       hash    the creator's live counts: subscribers
eng:{s:N}:lk:<c>|<u>            string  user u's like state on item c: 1 liked, -1 disliked,
                                        0 none (the seed's like_state:{userId}:{contentId})
eng:{s:N}:sb:<cr>|<u>           string  user u's subscription to creator cr: 1 or 0
eng:{s:N}:uv:<content_id>       hll     user ids that viewed the item, all time
eng:{s:N}:uvd:<yyyymmdd>:<c>    hll     user ids that viewed item c on that UTC day
eng:{s:N}:reg:<content_id>      string  the content registry's "<creator_id>|<content_type>"
                                        ("" when the item is not registered)
eng:{u:<user_id>}:rl:<action>   zset    request id -> admission time (ms): one user's sliding-
                                        window log; expires one window after the last one
                                        (not reloadable: evicting it only forgets a window)
==============================  ======  =================================================

Pending data and bookkeeping (no TTL: removed by the code that owns it):

==============================  ======  =================================================
eng:{s:N}:delta                 hash    "<counter>:<content_id>" -> increment not yet flushed
                                        ("subscribers:<creator_id>" for creators)
eng:{s:N}:vdelta                list    view drains not yet flushed: per applied drain, its
                                        views, watch seconds and playback signals as three
                                        msgpack maps (the drain's own arguments, concatenated);
                                        past ENGAGEMENT_VIEW_DELTA_MAX_DRAINS a drain's
                                        increments go to the delta hash instead
eng:{s:N}:sdelta                hash    "<content_id>|<user_id>" -> like state not yet flushed
eng:{s:N}:subdelta              hash    "<creator_id>|<user_id>" -> subscription not yet flushed
                                        (1 subscribed, 0 removed)
eng:{s:N}:hdelta                hash    "<content_id>|<user_id>" -> "<ts_us>|<pct>|<pos>": heartbeats
                                        not yet flushed (N: the user's shard)
eng:{s:N}:hist:<user_id>        hash    content_id -> "<ts_us>|<pct>|<pos>": the user's watch
                                        positions not yet known to be in Postgres (N: the user's)
eng:{s:N}:dirty                 set     cold keys changed since the last capture (no TTL while
                                        listed here or in dirtybatch)
eng:{s:N}:batch, vbatch, sbatch, subbatch, hbatch, dirtybatch
                                        the same, captured by a flusher, until Postgres has them
eng:{s:N}:batch_id              string  id of that batch (key of the flush_batches ledger)
eng:{s:N}:lease                 string  "<owner>|<expiry ms>": the shard's flush lease
eng:{s:N}:rec                   hash    records with a lifetime: "r|..", "s|..", "h|..", "v|..",
                                        "b|.." Idempotency-Key answers (likes, subscriptions,
                                        shares, single views, view batches), "m:<id>:<0|1>" comment
                                        count markers, "d:<process>" drain marks, "l:<key>" load
                                        tokens of missing cold keys (and "l#", their counter)
eng:{s:N}:recexp                zset    record name -> expiry (ms); swept by the flusher
eng:{s:N}:uvtouch               set     "<yyyymmdd>:<content_id>" whose daily HLL changed since
                                        the flusher last wrote it to Postgres
eng:{s:N}:uvatouch              set     content ids whose all-time HLL changed likewise
eng:{s:N}:uvbatch, uvabatch     set     members taken from those by a flusher, until Postgres
                                        has them
eng:config:shards               string  the shard count the data was written with
eng:config:layout               string  the key layout version (2); see daemon/store/upgrade.py
eng:{c:<group>}:offsets         hash    "<topic>:<partition>" -> last offset applied by the Kafka
                                        consumer group (the idempotency store)
eng:{c:<group>}:claims          hash    "<topic>:<partition>" -> last offset reserved by a batch
eng:{c:<group>}:journal         hash    batch id -> msgpack: the batch's offset ranges and its view
                                        drains, kept until the batch is applied (crash recovery);
                                        "r:<batch id>" -> 1 while a recovery has taken it
eng:{c:<group>}:journal_ranges  hash    batch id -> msgpack: the offset ranges alone
==============================  ======  =================================================
"""

from __future__ import annotations

import time
import zlib
from datetime import date
from typing import Any

PREFIX = "eng"

# Counter columns of content_counters that deltas may carry, in table order.
COUNTERS = (
    "views", "likes", "dislikes", "comments", "shares", "watch_seconds",
    "completions", "skips", "replays",
)  # fmt: skip
# Playback signals counted instead of a view (event_type -> counter); see api/ingest.py.
PLAYBACK_COUNTERS = {"media_completed": "completions", "media_skipped": "skips", "media_replay": "replays"}
# Per-shard hashes (delta, sdelta, rec, ...) hold hundreds of fields. Stored as listpacks, every
# HINCRBY/HGET on them is a linear scan: with Redis's hash-max-listpack-entries at 512 (this machine's
# build default) a view drain costs twice the Redis CPU it costs at 128. Our private servers and
# docker-compose set it; the api warns at start when Redis has more (docs/operations.md,
# "Redis configuration").
HASH_MAX_LISTPACK_ENTRIES = 128
# Counter of creator_counters that deltas may carry: "subscribers:<creator_id>" (the creator's shard).
CREATOR_COUNTERS = ("subscribers",)
# The cold keys (a copy of Postgres, see the table above): the name after the hash tag -> their kind
# in metrics (engagement_cold_*_total{kind}, engagement_redis_keys{kind}).
COLD_KINDS = {
    "c": "counts",
    "cr": "creator",
    "lk": "like",
    "sb": "subscription",
    "uv": "viewers",
    "uvd": "viewers",
    "reg": "registry",
}


SHARDS_KEY = f"{PREFIX}:config:shards"
LAYOUT_KEY = f"{PREFIX}:config:layout"
LAYOUT = 2  # 1: per-shard live/state/subs hashes and TTL'd records (daemon/store/upgrade.py converts)


class LayoutError(RuntimeError):
    """The data in Redis was written with another shard count or key layout than this process's."""


async def check_shards(redis: Any, shards: int) -> None:
    """Record the shard count and the key layout on first use; refuse different ones later. Deltas
    written under one shard count would never be found by a flusher using another."""
    # GET first: at maxmemory a SET is refused even when the key exists, and processes must start then
    if await redis.get(SHARDS_KEY) is None and await redis.set(SHARDS_KEY, shards, nx=True):
        await redis.set(LAYOUT_KEY, LAYOUT, nx=True)  # a new Redis: this version's layout
    recorded = int(await redis.get(SHARDS_KEY))
    if recorded != shards:
        raise LayoutError(
            f"ENGAGEMENT_SHARDS={shards} but the data in Redis uses {recorded} shards; "
            "run every process with the same value"
        )
    layout = int(await redis.get(LAYOUT_KEY) or 1)  # data from before layouts were recorded: 1
    if layout != LAYOUT:
        raise LayoutError(
            f"the data in Redis uses key layout {layout}, this version layout {LAYOUT}: "
            "run `engagementd migrate` once (docs/operations.md, upgrading)"
        )


def shard_of(content_id: str, shards: int) -> int:
    return zlib.crc32(content_id.encode()) % shards


def tag(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}"


# -- cold state: keys of one item, creator or pair --------------------------------------------------


def counts_key(shard: int, content_id: str) -> str:
    """An item's live counts (a hash of COUNTERS, plus the uva and uvd flags)."""
    return f"{PREFIX}:{{s:{shard}}}:c:{content_id}"


def creator_key(shard: int, creator_id: str) -> str:
    """A creator's live counts (a hash of CREATOR_COUNTERS); N is the creator's shard."""
    return f"{PREFIX}:{{s:{shard}}}:cr:{creator_id}"


def like_key(shard: int, content_id: str, user_id: str) -> str:
    """One user's like state on one item: 1, -1 or 0."""
    return f"{PREFIX}:{{s:{shard}}}:lk:{content_id}|{user_id}"


def subscription_key(shard: int, creator_id: str, user_id: str) -> str:
    """One user's subscription to one creator: 1 or 0 (N: the creator's shard)."""
    return f"{PREFIX}:{{s:{shard}}}:sb:{creator_id}|{user_id}"


def registry_key(shard: int, content_id: str) -> str:
    """The content registry's copy of one item: "<creator_id>|<content_type>", or "" (not registered)."""
    return f"{PREFIX}:{{s:{shard}}}:reg:{content_id}"


def uv_key(shard: int, content_id: str) -> str:
    """An item's all-time unique viewers HLL. apply_views.lua derives it from ``tag(shard)``."""
    return f"{PREFIX}:{{s:{shard}}}:uv:{content_id}"


def uv_day_key(shard: int, day: str, content_id: str) -> str:
    """An item's unique viewers HLL of one UTC day (``day`` as yyyymmdd)."""
    return f"{PREFIX}:{{s:{shard}}}:uvd:{day}:{content_id}"


def state_field(content_id: str, user_id: str) -> str:
    """A pair's field in sdelta/subdelta (and the tail of its like/subscription key). Content ids never
    hold '|' (their charset is A-Za-z0-9_.:-); user ids may: split on the first."""
    return f"{content_id}|{user_id}"


def field(counter: str, content_id: str) -> str:
    """The field of a counter of one item (or creator) in the delta and batch hashes."""
    return f"{counter}:{content_id}"


def parse_delta_field(field: str) -> tuple[str, str]:
    """'views:abc' -> ('views', 'abc'); content ids may themselves contain ':'."""
    counter, _, content_id = field.partition(":")
    return counter, content_id


# -- pending data and bookkeeping of a shard --------------------------------------------------------


def delta_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:delta"


def batch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:batch"


def vdelta_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:vdelta"


def vbatch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:vbatch"


def batch_id_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:batch_id"


def sdelta_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:sdelta"


def sbatch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:sbatch"


def subdelta_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:subdelta"


def subbatch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:subbatch"


def hdelta_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:hdelta"


def hbatch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:hbatch"


def dirty_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:dirty"


def dirtybatch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:dirtybatch"


def lease_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:lease"


def rec_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:rec"


def recexp_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:recexp"


def history_key(shard: int, user_id: str) -> str:
    """A user's unflushed watch positions; N is the shard of the **user** id."""
    return f"{PREFIX}:{{s:{shard}}}:hist:{user_id}"


def uv_touch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:uvtouch"


def uv_batch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:uvbatch"


def uv_all_touch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:uvatouch"


def uv_all_batch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:uvabatch"


def rate_limit_key(user_id: str, action: str) -> str:
    """Per-user keys carry the user's hash tag: a user's limits live in one slot."""
    return f"{PREFIX}:{{u:{user_id}}}:rl:{action}"


# -- record names in eng:{s:N}:rec ------------------------------------------------------------------


def like_record(content_id: str, user_id: str, key: str) -> str:
    """A like/dislike's Idempotency-Key answer (in the item's shard)."""
    return f"r|{content_id}|{user_id}|{key}"


def subscription_record(creator_id: str, user_id: str, key: str) -> str:
    return f"s|{creator_id}|{user_id}|{key}"


def share_record(content_id: str, user_id: str, key: str) -> str:
    return f"h|{content_id}|{user_id}|{key}"


def view_record(content_id: str, user_id: str, key: str) -> str:
    """A single view's Idempotency-Key claim (``user_id`` "-": anonymous), in the item's shard."""
    return f"v|{content_id}|{user_id}|{key}"


def batch_record(user_id: str, key: str) -> str:
    """A view batch's Idempotency-Key claim, in the shard of the ingest client's user id."""
    return f"b|{user_id}|{key}"


def comment_mark(comment_id: int, counted: bool) -> str:
    """Marker of one comment count change (in the item's shard): 1 counted, 0 uncounted."""
    return f"m:{comment_id}:{int(counted)}"


TREND_BUCKET_S = 300  # trending: views per item per 5-minute bucket ...
TREND_HOUR_BUCKETS = 12  # ... and per hour (12 buckets)


def trend_bucket(pinned: float = 0.0, now: float | None = None) -> int:
    """The 5-minute trending bucket (epoch seconds // 300) at ``now`` (default: the clock), or at the
    pinned clock (ENGAGEMENT_TRENDING_CLOCK_S) when one is set."""
    return int((pinned or (time.time() if now is None else now)) // TREND_BUCKET_S)


def trend_key(shard: int, bucket: int) -> str:
    """Views per item in one 5-minute bucket of the shard (ZSET)."""
    return f"{PREFIX}:{{s:{shard}}}:tr:{bucket}"


def trend_hour_key(shard: int, hour: int) -> str:
    """Views per item in one hour of the shard (ZSET; ``hour`` = bucket // 12)."""
    return f"{PREFIX}:{{s:{shard}}}:trh:{hour}"


def uv_day(pinned: str = "", now: float | None = None) -> str:
    """The UTC day (yyyymmdd) of daily unique viewers HLLs at ``now`` (default: the clock), or the
    pinned day (ENGAGEMENT_UNIQUE_VIEWERS_DAY, YYYY-MM-DD) when one is set."""
    if pinned:
        return pinned.replace("-", "")
    return time.strftime("%Y%m%d", time.gmtime(now))


def day_date(day: str) -> date:
    """yyyymmdd (a day of the daily HLL keys) -> date."""
    return date(int(day[:4]), int(day[4:6]), int(day[6:8]))


def consumer_offsets_key(group: str) -> str:
    """The Kafka consumer's idempotency store: every key of one group shares the tag {c:<group>}."""
    return f"{PREFIX}:{{c:{group}}}:offsets"


def consumer_claims_key(group: str) -> str:
    return f"{PREFIX}:{{c:{group}}}:claims"


def consumer_journal_key(group: str) -> str:
    return f"{PREFIX}:{{c:{group}}}:journal"


def consumer_journal_ranges_key(group: str) -> str:
    return f"{PREFIX}:{{c:{group}}}:journal_ranges"

"""Redis key layout (DESIGN.md decision 1).

Every key of one content item carries the hash tag ``{s:N}``, N = crc32(content_id) mod shards, so
that one Lua script can change the live counts, the pending deltas and the idempotency records of an
item atomically on a single Redis and unchanged on Redis Cluster.

==============================  ======  =================================================
key                             type    what
==============================  ======  =================================================
eng:{s:N}:live                  hash    "<counter>:<content_id>" -> live count: views,
                                        watch_seconds, likes, ... (the seed's view_count:{id},
                                        like_count:{id}); one hash per shard, not a key per item
eng:{s:N}:delta                 hash    "<counter>:<content_id>" -> increment not yet flushed
eng:{s:N}:vdelta                list    view drains not yet flushed: per applied drain, its
                                        views, watch seconds and playback signals as three
                                        msgpack maps (the drain's own arguments, concatenated);
                                        past ENGAGEMENT_VIEW_DELTA_MAX_DRAINS a drain's
                                        increments go to the delta hash instead
eng:{s:N}:state                 hash    "<content_id>|<user_id>" -> 1 liked / -1 disliked (the
                                        seed's like_state:{userId}:{contentId})
eng:{s:N}:sdelta                hash    "<content_id>|<user_id>" -> like state not yet flushed
eng:{s:N}:sbatch                hash    like states captured by a flusher, until Postgres has them
eng:{s:N}:idem:<c>|<u>|<key>    string  first answer to an Idempotency-Key (expires after 24 h)
eng:{s:N}:subs                  hash    "<creator_id>|<user_id>" -> 1 subscribed (absent: none);
                                        N = shard of the creator id (the seed's sub_count:{id}
                                        is the live field "subscribers:<creator_id>")
eng:{s:N}:subdelta              hash    "<creator_id>|<user_id>" -> subscription not yet flushed
                                        (1 subscribed, 0 removed)
eng:{s:N}:subbatch              hash    subscriptions captured by a flusher, until Postgres has them
eng:{s:N}:subidem:<cr>|<u>|<k>  string  first answer to a subscription's Idempotency-Key
eng:{s:N}:shareidem:<c>|<u>|<k> string  first answer to a share's Idempotency-Key
eng:{s:N}:videm:<c>|<u>|<k>     string  a single view's Idempotency-Key claim (<u> "-": anonymous)


eng:{s:N}:cmtmark:<id>:<0|1>    string  marker: comment <id>'s count change (1: counted, 0: uncounted)
                                        was applied; deleted once Postgres has the row's flag
eng:{s:N}:batch                 hash    deltas captured by a flusher, until Postgres has them
eng:{s:N}:vbatch                list    view drains captured by a flusher with the batch
eng:{s:N}:batch_id              string  id of that batch (key of the flush_batches ledger)
eng:{s:N}:lease                 string  owner of the shard's flush lease
eng:{s:N}:drain:<drain_id>      string  marker: a view drain was applied (expires after 24 h)
eng:{s:N}:uv:<content_id>       hll     user ids that viewed the item, all time (unique viewers)
eng:{s:N}:uvd:<yyyymmdd>:<c>    hll     user ids that viewed item c on that UTC day; expires
                                        ENGAGEMENT_UNIQUE_VIEWERS_DAILY_TTL_S after its first view
eng:{s:N}:uvtouch               set     "<yyyymmdd>:<content_id>" whose HLLs changed since the
                                        flusher last wrote their counts to Postgres
eng:{s:N}:uvbatch               set     members taken from uvtouch by a flusher, until Postgres
                                        has their counts
eng:{s:N}:registry              hash    content_id -> "<creator_id>|<content_type>": the content
                                        registry (Postgres content_registry), read to enrich events
eng:{s:N}:hist:<user_id>        hash    content_id -> "<ts_us>|<pct>|<pos>": the user's watch
                                        positions not yet known to be in Postgres; N = shard of
                                        the *user* id (every history key of a user is in its slot)
eng:{s:N}:hdelta                hash    "<content_id>|<user_id>" -> "<ts_us>|<pct>|<pos>": heartbeats
                                        not yet flushed (coalesced: the last one per pair)
eng:{s:N}:hbatch                hash    heartbeats captured by a flusher with the batch
eng:config:shards               string  the shard count the data was written with
eng:{u:<user_id>}:bidem:<key>   string  a view batch's Idempotency-Key claim (the ingest client)


eng:{c:<group>}:offsets         hash    "<topic>:<partition>" -> last offset applied by the Kafka
                                        consumer group (the idempotency store; expires after 24 h)
eng:{c:<group>}:claims          hash    "<topic>:<partition>" -> last offset reserved by a batch
eng:{c:<group>}:journal         hash    batch id -> msgpack: the batch's offset ranges and its view
                                        drains, kept until the batch is applied (crash recovery)
eng:{c:<group>}:journal_ranges  hash    batch id -> msgpack: the offset ranges alone
eng:{u:<user_id>}:rl:<action>   zset    request id -> admission time (ms): one user's sliding-window
                                        log for one action; expires one window after the last one
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
# Per-shard hashes (live, delta, state, ...) hold hundreds of fields. Stored as listpacks, every
# HINCRBY/HGET on them is a linear scan: with Redis's hash-max-listpack-entries at 512 (this machine's
# build default) a view drain costs twice the Redis CPU it costs at 128. Our private servers and
# docker-compose set it; the api warns at start when Redis has more (README, "Redis configuration").
HASH_MAX_LISTPACK_ENTRIES = 128
# Counter of creator_counters that deltas may carry: "subscribers:<creator_id>" (the creator's shard).
CREATOR_COUNTERS = ("subscribers",)


SHARDS_KEY = f"{PREFIX}:config:shards"


class LayoutError(RuntimeError):
    """This process's shard count differs from the one the data in Redis was written with."""


async def check_shards(redis: Any, shards: int) -> None:
    """Record the shard count on first use; refuse a different one later. Deltas written under one
    count would never be found by a flusher using another."""
    await redis.set(SHARDS_KEY, shards, nx=True)
    recorded = int(await redis.get(SHARDS_KEY))
    if recorded != shards:
        raise LayoutError(
            f"ENGAGEMENT_SHARDS={shards} but the data in Redis uses {recorded} shards; "
            "run every process with the same value"
        )


def shard_of(content_id: str, shards: int) -> int:
    return zlib.crc32(content_id.encode()) % shards


def tag(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}"


def live_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:live"


def field(counter: str, content_id: str) -> str:
    """The field of a counter of one item in the live, delta and batch hashes."""
    return f"{counter}:{content_id}"


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


def state_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:state"


def sdelta_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:sdelta"


def sbatch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:sbatch"


def idem_key(shard: int, content_id: str, user_id: str, key: str) -> str:
    return f"{PREFIX}:{{s:{shard}}}:idem:{content_id}|{user_id}|{key}"


def subs_key(shard: int) -> str:
    """Subscription state; N is the shard of the creator id (``shard_of(creator_id, shards)``)."""
    return f"{PREFIX}:{{s:{shard}}}:subs"


def subdelta_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:subdelta"


def subbatch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:subbatch"


def sub_idem_key(shard: int, creator_id: str, user_id: str, key: str) -> str:
    return f"{PREFIX}:{{s:{shard}}}:subidem:{creator_id}|{user_id}|{key}"


def share_idem_key(shard: int, content_id: str, user_id: str, key: str) -> str:
    return f"{PREFIX}:{{s:{shard}}}:shareidem:{content_id}|{user_id}|{key}"


def view_idem_key(shard: int, content_id: str, user_id: str, key: str) -> str:
    return f"{PREFIX}:{{s:{shard}}}:videm:{content_id}|{user_id}|{key}"


def batch_idem_key(user_id: str, key: str) -> str:
    return f"{PREFIX}:{{u:{user_id}}}:bidem:{key}"


def comment_mark_key(shard: int, comment_id: int, counted: bool) -> str:
    """Marker of one comment count change (N: the shard of the comment's content item)."""
    return f"{PREFIX}:{{s:{shard}}}:cmtmark:{comment_id}:{int(counted)}"


def state_field(content_id: str, user_id: str) -> str:
    """Content ids never hold '|' (their charset is A-Za-z0-9_.:-); user ids may: split on the first."""
    return f"{content_id}|{user_id}"


def history_key(shard: int, user_id: str) -> str:
    """A user's unflushed watch positions; N is the shard of the **user** id."""
    return f"{PREFIX}:{{s:{shard}}}:hist:{user_id}"


def hdelta_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:hdelta"


def hbatch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:hbatch"


def rate_limit_key(user_id: str, action: str) -> str:
    """Per-user keys carry the user's hash tag: a user's limits live in one slot."""
    return f"{PREFIX}:{{u:{user_id}}}:rl:{action}"


def lease_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:lease"


def registry_key(shard: int) -> str:
    """The content registry cache: content_id -> "<creator_id>|<content_type>" (N: the content's shard)."""
    return f"{PREFIX}:{{s:{shard}}}:registry"


def drain_key(shard: int, drain_id: str) -> str:
    return f"{PREFIX}:{{s:{shard}}}:drain:{drain_id}"


def uv_key(shard: int, content_id: str) -> str:
    """An item's all-time unique viewers HLL. apply_views.lua derives it from ``tag(shard)``."""
    return f"{PREFIX}:{{s:{shard}}}:uv:{content_id}"


def uv_day_key(shard: int, day: str, content_id: str) -> str:
    """An item's unique viewers HLL of one UTC day (``day`` as yyyymmdd)."""
    return f"{PREFIX}:{{s:{shard}}}:uvd:{day}:{content_id}"


def uv_touch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:uvtouch"


def uv_batch_key(shard: int) -> str:
    return f"{PREFIX}:{{s:{shard}}}:uvbatch"


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


def parse_delta_field(field: str) -> tuple[str, str]:
    """'views:abc' -> ('views', 'abc'); content ids may themselves contain ':'."""
    counter, _, content_id = field.partition(":")
    return counter, content_id

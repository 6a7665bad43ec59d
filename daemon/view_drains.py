"""Pending view drains: the ``vdelta`` and ``vbatch`` lists, read by the flusher and by reconcile.

``apply_views.lua`` keeps each applied drain's increments as one entry of the shard's ``vdelta`` list
(views, watch seconds and playback signals: three msgpack maps, concatenated) instead of adding them to
the ``delta`` hash item by item; ``capture_batch.lua`` renames the list to ``vbatch`` with the hash and
returns how many entries it holds. The entries are binary, so they are read here with a command whose
reply is not decoded, and summed into a flush batch's rows in Python.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
from redis.client import NEVER_DECODE

from daemon import keys

log = logging.getLogger(__name__)

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


def unpack(drain: bytes) -> list[tuple[str, dict[str, int]]]:
    """(counter, {content_id: increment}) of one drain: views, watch seconds, then its playback
    signals."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(drain)
    views, watch, signals = unpacker  # exactly three maps: anything else is a bug, raised
    return [("views", views), ("watch_seconds", watch), *signals.items()]


def drain_items(drains: Iterable[bytes]) -> set[str]:
    """The content ids that the drains count something for."""
    return {content_id for drain in drains for _, increments in unpack(drain) for content_id in increments}


def add_drains(rows: dict[str, list[int]], drains: Iterable[bytes]) -> None:
    """Add the increments of captured drains to ``rows`` ({content_id: [views, likes, ...]})."""
    width = len(keys.COUNTERS)
    for drain in drains:
        for counter, increments in unpack(drain):
            index = COUNTER_INDEX.get(counter)
            if index is None:
                log.error("unknown counter %r in a view drain kept out of Postgres", counter)
                continue
            for content_id, n in increments.items():
                row = rows.get(content_id)
                if row is None:
                    row = rows[content_id] = [0] * width
                row[index] += n

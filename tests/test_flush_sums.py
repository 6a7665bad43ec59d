"""The flusher's sums of a batch: view drains into rows and daily entries (``add_drains``), and the rows of
several batches into one record per item (``_merge``), against a plain per-increment reference."""

from __future__ import annotations

import random

import msgpack
import pytest

from daemon import gcpause, keys
from daemon.views.drains import COUNTER_INDEX, add_drains
from flusher.writer import CapturedBatch, _merge

TODAY = "20261208"


def _drain(rnd: random.Random, ids: list[str], day: str | None) -> tuple[bytes, list[tuple[str, str, int]]]:
    """A drain entry as apply_views.lua keeps it, and its increments as (counter, content_id, n)."""
    views = {c: rnd.randint(1, 9) for c in rnd.sample(ids, rnd.randint(1, len(ids)))}
    watch = {c: rnd.randint(0, 600) for c in views if rnd.random() < 0.7}
    signals = {"shares": {c: 1 for c in rnd.sample(ids, 3)}} if rnd.random() < 0.5 else {}
    head = msgpack.packb(day) if day is not None else b""
    entry = head + b"".join(msgpack.packb(m) for m in (views, watch, signals))
    increments = [("views", c, n) for c, n in views.items()] + [
        ("watch_seconds", c, n) for c, n in watch.items()
    ]
    increments += [(counter, c, n) for counter, m in signals.items() for c, n in m.items()]
    return entry, increments


@pytest.mark.parametrize("seed", range(12))
def test_drains_add_up_to_the_sum_of_their_increments(seed: int) -> None:
    rnd = random.Random(seed)
    ids = [f"item-{i}" for i in range(rnd.choice((5, 40, 300)))]
    width = len(keys.COUNTERS)
    # Given rows and daily entries the delta hash already gave the batch (likes; an older day's views)
    rows = {c: [0, rnd.randint(0, 3)] + [0] * (width - 2) for c in rnd.sample(ids, len(ids) // 3)}
    daily = {(c, rnd.choice((TODAY, "20261207"))): [2, 5] for c in rnd.sample(ids, len(ids) // 4)}
    want_rows = {c: list(v) for c, v in rows.items()}
    want_daily = {k: list(v) for k, v in daily.items()}

    # When drains of one to twelve per batch, of today, yesterday and the days before daily counts, are added
    drains = []
    for _ in range(rnd.randint(1, 12)):
        day = rnd.choice((TODAY, "20261207", None))
        entry, increments = _drain(rnd, ids, day)
        drains.append(entry)
        for counter, content_id, n in increments:
            want_rows.setdefault(content_id, [0] * width)[COUNTER_INDEX[counter]] += n
            if counter in ("views", "watch_seconds"):
                entry_of_day = want_daily.setdefault((content_id, day or TODAY), [0, 0])
                entry_of_day[0 if counter == "views" else 1] += n
    with gcpause.paused():
        add_drains(rows, drains, daily, TODAY)

    # Then every item's row and every (item, day) entry is the sum of its increments
    assert rows == want_rows
    assert daily == want_daily


def test_batches_become_one_record_per_item_whether_or_not_they_share_items() -> None:
    def batch(shard: int, rows: dict[str, list[int]]) -> CapturedBatch:
        return CapturedBatch(shard, f"b{shard}", rows)

    apart = [batch(0, {"a": [1, 0, 0, 0, 0, 5]}), batch(1, {"b": [2, 1, 0, 0, 0, 0]})]
    assert sorted(_merge(apart)) == [("a", 1, 0, 0, 0, 0, 5), ("b", 2, 1, 0, 0, 0, 0)]
    shared = [batch(0, {"a": [1, 0, 0, 0, 0, 5], "c": [1] * 6}), batch(1, {"a": [2, 1, 0, 0, 0, 1]})]
    assert sorted(_merge(shared)) == [("a", 3, 1, 0, 0, 0, 6), ("c", 1, 1, 1, 1, 1, 1)]
    assert shared[0].rows["a"] == [1, 0, 0, 0, 0, 5]  # the batches' own rows are left as they were
    assert _merge([]) == []


def test_a_pause_of_the_collector_ends_with_the_outermost_one() -> None:
    import gc

    assert gc.isenabled()
    with gcpause.paused():
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()

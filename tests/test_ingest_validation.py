"""Batch validation: the C-level fast check and the item-by-item check agree, item for item."""

from __future__ import annotations

import random
from collections import Counter

import msgpack
import orjson
import pytest

from api.errors import ApiError
from api.ingest import BodyReader
from daemon.settings import Settings

READER = BodyReader(Settings.from_env({}))

BAD_ITEMS = [
    ("not an object", "invalid_item"),
    (["content_id", "x"], "invalid_item"),
    ({}, "invalid_content_id"),
    ({"content_id": 12}, "invalid_content_id"),
    ({"content_id": ""}, "invalid_content_id"),
    ({"content_id": "a b"}, "invalid_content_id"),
    ({"content_id": "a\nb"}, "invalid_content_id"),
    ({"content_id": "x" * 129}, "invalid_content_id"),
    ({"content_id": "ok", "extra": 1}, "unknown_field"),
    ({"content_id": "ok", "user_id": None}, "invalid_user_id"),
    ({"content_id": "ok", "user_id": 5}, "invalid_user_id"),
    ({"content_id": "ok", "user_id": "bad user"}, "invalid_user_id"),
    ({"content_id": "ok", "watch_seconds": -1}, "invalid_watch_seconds"),
    ({"content_id": "ok", "watch_seconds": True}, "invalid_watch_seconds"),
    ({"content_id": "ok", "watch_seconds": 1.5}, "invalid_watch_seconds"),
    ({"content_id": "ok", "watch_seconds": "3"}, "invalid_watch_seconds"),
    ({"content_id": "ok", "watch_seconds": 86_401}, "invalid_watch_seconds"),
]


def _good_batch(rng: random.Random, n: int) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    for _ in range(n):
        item: dict[str, object] = {"content_id": f"c-{rng.randrange(50)}"}
        if rng.random() < 0.4:
            item["user_id"] = f"u-{rng.randrange(1000)}"
        if rng.random() < 0.3:
            item["watch_seconds"] = rng.choice([None, 0, rng.randrange(1, 86_400)])
        items.append(item)
    return items


def _expected(items: list[dict[str, object]]) -> tuple[Counter[str], dict[str, int]]:
    counts: Counter[str] = Counter()
    watch: Counter[str] = Counter()
    for item in items:
        counts[item["content_id"]] += 1  # type: ignore[index]
        watch[item["content_id"]] += item.get("watch_seconds") or 0  # type: ignore[index,operator]
    return counts, {k: v for k, v in watch.items() if v}


@pytest.mark.parametrize("seed", range(20))
def test_valid_batches_are_counted_exactly(seed: int) -> None:
    rng = random.Random(seed)
    items = _good_batch(rng, rng.randint(1, 2000))
    decoded = READER.decode_batch(msgpack.packb(items), "application/msgpack")
    batch = READER.batch(decoded)
    counts, watch = _expected(items)
    assert batch.events == len(items)
    assert Counter(batch.ids) == counts
    summed: Counter[str] = Counter()
    for content_id, seconds in zip(batch.watch_ids, batch.watch_seconds, strict=True):
        assert seconds > 0
        summed[content_id] += seconds
    assert dict(summed) == watch


@pytest.mark.parametrize(("bad", "code"), BAD_ITEMS)
def test_a_bad_item_rejects_the_batch_and_names_its_index(bad: object, code: str) -> None:
    rng = random.Random(1)
    items: list[object] = list(_good_batch(rng, 500))
    items.insert(321, bad)
    with pytest.raises(ApiError) as raised:
        READER.batch(items)
    assert (raised.value.status, raised.value.code, raised.value.extra) == (422, code, {"index": 321})


def test_the_first_bad_item_is_the_one_named() -> None:
    items: list[object] = [{"content_id": "a"}] * 10 + [{"content_id": 1}, {"content_id": "b", "x": 1}]
    with pytest.raises(ApiError) as raised:
        READER.batch(items)
    assert raised.value.extra == {"index": 10}


def test_content_id_only_batches_take_the_short_path() -> None:
    batch = READER.batch([{"content_id": "a"}, {"content_id": "b"}, {"content_id": "a"}])
    assert (batch.ids, batch.watch_ids, batch.watch_seconds) == (["a", "b", "a"], [], [])


@pytest.mark.parametrize(
    ("body", "media", "status", "code"),
    [
        (b"\xc1\xc1", "application/msgpack", 400, "malformed_body"),
        (b"[1,", "application/json", 400, "malformed_body"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_undecodable_bodies_are_refused(body: bytes, media: str, status: int, code: str) -> None:
    with pytest.raises(ApiError) as raised:
        READER.decode_batch(body, media)
    assert (raised.value.status, raised.value.code) == (status, code)


def test_not_an_array_and_too_many_items_are_refused() -> None:
    with pytest.raises(ApiError) as raised:
        READER.batch({"content_id": "a"})
    assert (raised.value.status, raised.value.code) == (422, "invalid_body")
    with pytest.raises(ApiError) as raised:
        READER.batch([{"content_id": "a"}] * 10_001)
    assert (raised.value.status, raised.value.code) == (413, "too_many_items")


def _columns(items: list[dict[str, object]]) -> dict[str, list[object]]:
    names = sorted({name for item in items for name in item}, key=lambda n: n != "content_id")
    return {name: [item.get(name) for item in items] for name in names}


def _fields(batch: object) -> tuple[object, ...]:
    return tuple(
        getattr(batch, name)
        for name in (
            "ids",
            "watch_ids",
            "watch_seconds",
            "signals",
            "events",
            "viewer_ids",
            "viewer_users",
            "playback",
        )
    )


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("media", ["application/msgpack", "application/json"])
def test_a_columnar_batch_is_the_same_batch_as_its_items(seed: int, media: str) -> None:
    # Given random good batches, some with every event carrying a user id, some with playback signals
    # and sessions (the items' path), null standing for an absent field in a column
    rng = random.Random(seed)
    items = _good_batch(rng, rng.randint(1, 2000))
    items = [{k: v for k, v in item.items() if v is not None} for item in items]
    if seed % 3 == 1:
        for item in items:
            item["user_id"] = f"u-{rng.randrange(1000)}"
    if seed % 3 == 2:
        for item in items[::7]:
            item["event_type"] = rng.choice(["media_completed", "media_started", "media_skipped"])
            item["session_id"] = f"s-{rng.randrange(9)}"
    encode = msgpack.packb if media == "application/msgpack" else orjson.dumps
    for playback in (False, True):
        # When both are read
        as_items = READER.batch(READER.decode_batch(encode(items), media), playback)
        as_columns = READER.batch(READER.decode_batch(encode(_columns(items)), media), playback)
        # Then they are the same events, viewers and playback events
        assert _fields(as_columns) == _fields(as_items)


COLUMN_ERRORS = [
    ({"content_id": ["a", 12, "b"]}, 422, "invalid_content_id", {"index": 1}),
    ({"content_id": ["a", None, "b"]}, 422, "invalid_content_id", {"index": 1}),
    ({"content_id": ["a", "b c", "b"]}, 422, "invalid_content_id", {"index": 1}),
    ({"content_id": ["a", "b", "c"], "user_id": ["u", "", None]}, 422, "invalid_user_id", {"index": 1}),
    ({"content_id": ["a", "b", "c"], "user_id": [None, 5, "u"]}, 422, "invalid_user_id", {"index": 1}),
    (
        {"content_id": ["a", "b", "c"], "watch_seconds": [1, -1, None]},
        422,
        "invalid_watch_seconds",
        {"index": 1},
    ),
    (
        {"content_id": ["a", "b", "c"], "watch_seconds": [1, 1.5, None]},
        422,
        "invalid_watch_seconds",
        {"index": 1},
    ),
    (
        {"content_id": ["a", "b", "c"], "event_type": [None, "nope", None]},
        422,
        "invalid_event_type",
        {"index": 1},
    ),
    ({"content_id": ["a", "b"], "user_id": ["u"]}, 422, "invalid_body", {}),
    ({"content_id": ["a", "b"], "watch_seconds": 3}, 422, "invalid_body", {}),
    ({"content_id": "a"}, 422, "invalid_body", {}),
    ({"user_id": ["u"]}, 422, "invalid_body", {}),
    ({"content_id": ["a"], "extra": [1]}, 422, "unknown_field", {}),
    ({"content_id": ["a"] * 10_001}, 413, "too_many_items", {}),
]


@pytest.mark.parametrize(("body", "status", "code", "extra"), COLUMN_ERRORS)
def test_a_bad_column_rejects_the_batch_with_the_items_error(
    body: dict[str, object], status: int, code: str, extra: dict[str, int]
) -> None:
    with pytest.raises(ApiError) as raised:
        READER.batch(READER.decode_batch(msgpack.packb(body), "application/msgpack"))
    assert (raised.value.status, raised.value.code, raised.value.extra) == (status, code, extra)


def test_integral_floats_and_empty_columns_are_accepted() -> None:
    batch = READER.batch({"content_id": ["a", "b"], "watch_seconds": [37.0, None]})
    assert (batch.ids, batch.watch_ids, batch.watch_seconds) == (["a", "b"], ["a"], [37])
    assert READER.batch({"content_id": [], "user_id": []}).events == 0

"""Playback signals and engagement events: counts in Postgres, events read back from the mock cluster.

The api runs as a real process producing to a librdkafka mock cluster started in the test process
(its bootstrap servers go to the api as ``ENGAGEMENT_KAFKA_BOOTSTRAP``).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable

import msgpack
import orjson
import pytest
from kafka_fixtures import consume
from service_fixtures import ApiProcess, counters_in_postgres, run_flusher_once, token

from api.errors import ApiError
from api.ingest import BodyReader
from daemon.events import USER_ENGAGEMENT_EVENTS
from daemon.kafka_mock import MockCluster
from daemon.settings import Settings

READER = BodyReader(Settings())
PAYLOAD_FIELDS = {
    "user_id",
    "content_id",
    "creator_id",
    "event_type",
    "watch_duration_seconds",
    "content_type",
    "session_id",
}
INTERNAL = {"Authorization": f"Bearer {token('catalog-service', scope='internal')}"}
INGEST = {"Authorization": f"Bearer {token('player-gateway', scope='ingest')}"}


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _register(api: ApiProcess, content_id: str, creator_id: str, content_type: str) -> None:
    r = api.client.put(
        f"/internal/v1/content/{content_id}",
        json={"creator_id": creator_id, "content_type": content_type},
        headers=INTERNAL,
    )
    assert r.status_code == 200, r.text


def _events(cluster: MockCluster, n: int) -> list[tuple[bytes | None, dict]]:
    """Exactly n events of user.engagement.events: (key, envelope), each checked for its shape."""
    records = consume(cluster.bootstrap_servers, USER_ENGAGEMENT_EVENTS, n)
    out = []
    for key, value, _ in records:
        event = orjson.loads(value)  # type: ignore[arg-type]
        assert set(event) == {"event_id", "timestamp", "source_service", "payload"}
        assert uuid.UUID(event["event_id"]).version == 4
        assert event["source_service"] == "engagement-service"
        assert set(event["payload"]) == PAYLOAD_FIELDS
        assert key == event["payload"]["user_id"].encode(), "keyed on user_id"
        out.append((key, event))
    assert len({e["event_id"] for _, e in out}) == n
    return out


def _payloads(events: list[tuple[bytes | None, dict]]) -> list[tuple]:
    fields = sorted(PAYLOAD_FIELDS)
    return sorted(tuple(str(e["payload"][f]) for f in fields) for _, e in events)


def _payload(**values: object) -> tuple:
    base = {"watch_duration_seconds": None, "session_id": "", "creator_id": "", "content_type": ""}
    merged = {**base, **values}
    return tuple(str(merged[f]) for f in sorted(PAYLOAD_FIELDS))


@pytest.fixture
def kafka_api(
    kafka_cluster: MockCluster, migrated: Settings, start_api: Callable[..., ApiProcess]
) -> ApiProcess:
    return start_api(migrated.replace(kafka_bootstrap=kafka_cluster.bootstrap_servers, rate_limits=""))


# -- likes and dislikes ----------------------------------------------------------------------------


def test_each_like_state_change_emits_exactly_one_event(kafka_api: ApiProcess, kafka_cluster) -> None:
    api = kafka_api
    _register(api, "clip-1", "creator-9", "VIDEO")
    steps = [
        ("POST", "like", "alice", None),  # -> media_liked
        ("POST", "like", "alice", None),  # unchanged: nothing
        ("POST", "dislike", "alice", None),  # switch -> media_disliked
        ("DELETE", "dislike", "alice", None),  # removal: nothing (no such event type)
        ("DELETE", "like", "alice", None),  # nothing to remove: nothing
        ("POST", "like", "bob", "k-1"),  # -> media_liked
        ("POST", "like", "bob", "k-1"),  # replayed: nothing
    ]
    for method, what, user, key in steps:
        headers = {**_auth(user), **({"Idempotency-Key": key} if key else {})}
        r = api.client.request(method, f"/api/v1/content/clip-1/{what}", headers=headers)
        assert r.status_code == 200, r.text
    # an item the registry does not know: creator_id and content_type are ""
    assert api.client.post("/api/v1/content/clip-unknown/dislike", headers=_auth("carol")).status_code == 200
    assert api.stop() == 0  # the producer delivers what is pending before the process exits

    got = _events(kafka_cluster, 4)
    known = {"creator_id": "creator-9", "content_type": "VIDEO", "content_id": "clip-1"}
    assert _payloads(got) == sorted(
        [
            _payload(user_id="alice", event_type="media_liked", **known),
            _payload(user_id="alice", event_type="media_disliked", **known),
            _payload(user_id="bob", event_type="media_liked", **known),
            _payload(user_id="carol", content_id="clip-unknown", event_type="media_disliked"),
        ]
    )
    alice = [e["payload"]["event_type"] for k, e in got if k == b"alice"]
    assert alice == ["media_liked", "media_disliked"], "one key: one partition, in order"


# -- playback ---------------------------------------------------------------------------------------


def test_views_with_a_user_emit_playback_events_and_signals_are_counted_apart(
    kafka_api: ApiProcess, kafka_cluster: MockCluster
) -> None:
    api = kafka_api
    _register(api, "song-1", "creator-3", "AUDIO")
    _register(api, "film-2", "creator-4", "VIDEO")
    url = "/api/v1/content/{}/views"
    singles = [
        ("song-1", None, None),  # anonymous view: counted, no event
        ("song-1", {"watch_seconds": 12, "event_type": "media_completed"}, None),  # anonymous signal
        ("song-1", None, "alice"),
        ("song-1", {"event_type": "media_completed", "watch_seconds": 30, "session_id": "s-1"}, "alice"),
        ("film-2", {"event_type": "media_started", "session_id": "s-2"}, "bob"),
        ("film-2", {"event_type": "media_skipped", "watch_seconds": 0}, "bob"),
        ("film-2", {"event_type": "media_replay"}, "bob"),
    ]
    for content_id, body, user in singles:
        r = api.client.post(url.format(content_id), json=body, headers=_auth(user) if user else None)
        assert r.status_code == 202, r.text
    batch = [
        {"content_id": "song-1"},  # anonymous: counted, no event
        {"content_id": "song-1", "user_id": "u-1", "watch_seconds": 40},
        {"content_id": "film-2", "user_id": "u-2", "event_type": "media_skipped", "session_id": "s-9"},
        {"content_id": "film-2", "event_type": "media_replay"},  # anonymous signal
        {"content_id": "other-3", "user_id": "u-3", "event_type": "media_completed", "watch_seconds": 7},
    ]
    r = api.client.post(
        "/api/v1/views/batch",
        content=msgpack.packb(batch),
        headers={**INGEST, "Content-Type": "application/msgpack"},
    )
    assert (r.status_code, r.json()) == (202, {"accepted": 5})
    assert api.stop() == 0

    song = {"content_id": "song-1", "creator_id": "creator-3", "content_type": "AUDIO"}
    film = {"content_id": "film-2", "creator_id": "creator-4", "content_type": "VIDEO"}
    assert _payloads(_events(kafka_cluster, 8)) == sorted(
        [
            _payload(user_id="alice", event_type="media_started", **song),
            _payload(
                user_id="alice",
                event_type="media_completed",
                watch_duration_seconds=30,
                session_id="s-1",
                **song,
            ),
            _payload(user_id="bob", event_type="media_started", session_id="s-2", **film),
            _payload(user_id="bob", event_type="media_skipped", watch_duration_seconds=0, **film),
            _payload(user_id="bob", event_type="media_replay", **film),
            _payload(user_id="u-1", event_type="media_started", watch_duration_seconds=40, **song),
            _payload(user_id="u-2", event_type="media_skipped", session_id="s-9", **film),
            _payload(
                user_id="u-3", content_id="other-3", event_type="media_completed", watch_duration_seconds=7
            ),
        ]
    )

    run_flusher_once(api.settings)
    rows = counters_in_postgres(api.settings.database_url)
    pick = ("views", "completions", "skips", "replays", "watch_seconds")
    assert {c: {k: rows[c][k] for k in pick} for c in rows} == {
        "song-1": {"views": 4, "completions": 2, "skips": 0, "replays": 0, "watch_seconds": 12 + 30 + 40},
        "film-2": {"views": 1, "completions": 0, "skips": 2, "replays": 2, "watch_seconds": 0},
        "other-3": {"views": 0, "completions": 1, "skips": 0, "replays": 0, "watch_seconds": 7},
    }


def test_thousands_of_mixed_signals_are_counted_exactly(start_api, migrated: Settings) -> None:
    # Given many items (more than one script call holds per shard) and every event type, in bulk and
    # in single views, with events disabled (counting must not depend on Kafka)
    api = start_api(migrated)
    rng = random.Random(3)
    types = ["media_started", "media_completed", "media_skipped", "media_replay", None]
    counter_of = {
        "media_started": "views",
        None: "views",
        "media_completed": "completions",
        "media_skipped": "skips",
        "media_replay": "replays",
    }
    expected: dict[str, Counter[str]] = {}
    for _ in range(4):
        batch = []
        for _ in range(8000):
            item: dict[str, object] = {"content_id": f"m-{rng.randrange(40_000)}"}
            event_type = rng.choice(types)
            if event_type is not None:
                item["event_type"] = event_type
            if rng.random() < 0.3:
                item["user_id"] = f"u-{rng.randrange(100)}"
            batch.append(item)
            expected.setdefault(str(item["content_id"]), Counter())[counter_of[event_type]] += 1
        r = api.client.post(
            "/api/v1/views/batch",
            content=msgpack.packb(batch),
            headers={**INGEST, "Content-Type": "application/msgpack"},
        )
        assert r.status_code == 202, r.text
    for i in range(60):
        event_type = types[i % 5]
        body = {"event_type": event_type} if event_type else None
        assert api.client.post("/api/v1/content/m-1/views", json=body).status_code == 202
        expected.setdefault("m-1", Counter())[counter_of[event_type]] += 1
    assert api.stop() == 0
    run_flusher_once(api.settings)
    rows = counters_in_postgres(api.settings.database_url)
    names = ("views", "completions", "skips", "replays")
    assert {c: {k: r[k] for k in names if r[k]} for c, r in rows.items()} == {
        c: dict(counts) for c, counts in expected.items()
    }


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"event_type": "media_liked"}, "invalid_event_type"),
        ({"event_type": "MEDIA_STARTED"}, "invalid_event_type"),
        ({"event_type": 3}, "invalid_event_type"),
        ({"event_type": ["media_started"]}, "invalid_event_type"),
        ({"session_id": "has space"}, "invalid_session_id"),
        ({"session_id": "s" * 129}, "invalid_session_id"),
        ({"session_id": 7}, "invalid_session_id"),
        ({"session": "x"}, "unknown_field"),
    ],
)
def test_bad_playback_fields_are_refused(body: dict, code: str) -> None:
    with pytest.raises(ApiError) as raised:
        READER.single_view(orjson.dumps(body))
    assert (raised.value.status, raised.value.code) == (422, code)
    items: list[object] = [{"content_id": "a", "user_id": "u"}] * 7 + [{"content_id": "b", **body}]
    with pytest.raises(ApiError) as raised:
        READER.batch(items)
    assert (raised.value.status, raised.value.code, raised.value.extra) == (422, code, {"index": 7})


def test_playback_fields_are_parsed_in_single_views_and_batches() -> None:
    view = READER.single_view(b'{"event_type": "media_replay", "session_id": "' + b"s" * 128 + b'"}')
    assert (view.event_type, view.session_id, view.watch_seconds, view.given_seconds) == (
        "media_replay",
        "s" * 128,
        0,
        None,
    )
    assert READER.single_view(b'{"event_type": null, "watch_seconds": 3}').event_type == "media_started"
    items = [
        {"content_id": "a", "event_type": "media_completed", "watch_seconds": 5, "user_id": "u1"},
        {"content_id": "b", "session_id": "s1"},
        {"content_id": "a", "event_type": "media_started", "user_id": "u2", "session_id": None},
        {"content_id": "c", "event_type": "media_skipped"},
        {"content_id": "c", "event_type": "media_skipped", "user_id": "u3", "session_id": "s3"},
    ]
    batch = READER.batch(items, playback=True)
    assert batch.events == 5
    assert batch.ids == ["b", "a"]
    assert batch.signals == {"completions": ["a"], "skips": ["c", "c"]}
    assert (batch.watch_ids, batch.watch_seconds) == (["a"], [5])
    assert batch.playback == [
        ("u1", "a", "media_completed", 5, ""),
        ("u2", "a", "media_started", None, ""),
        ("u3", "c", "media_skipped", None, "s3"),
    ]
    assert READER.batch(items).playback == []  # events disabled: nothing built


def test_an_invalid_event_type_is_a_422_over_http(api: ApiProcess) -> None:
    r = api.client.post("/api/v1/content/x/views", json={"event_type": "media_paused"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_event_type")
    r = api.client.post(
        "/api/v1/views/batch",
        json=[{"content_id": "x"}, {"content_id": "y", "event_type": "nope"}],
        headers=INGEST,
    )
    assert (r.status_code, r.json()["error"], r.json()["index"]) == (422, "invalid_event_type", 1)


# -- shares and subscriptions -----------------------------------------------------------------------


def test_shares_emit_media_shared_and_subscriptions_reach_their_own_topic(
    kafka_api: ApiProcess, kafka_cluster: MockCluster
) -> None:
    api = kafka_api
    _register(api, "clip-s", "creator-1", "AUDIO")
    share = api.client.post(
        "/api/v1/content/clip-s/shares",
        json={"platform": "whatsapp", "external": True},
        headers=_auth("dora"),
    )
    assert share.status_code == 201, share.text
    for method, user in [("POST", "dora"), ("POST", "dora"), ("POST", "erin"), ("DELETE", "dora")]:
        r = api.client.request(method, "/api/v1/creators/creator-1/subscribe", headers=_auth(user))
        assert r.status_code == 200, r.text
    assert api.stop() == 0

    # Then one media_shared event, enveloped and enriched from the registry
    got = _events(kafka_cluster, 1)
    known = {"creator_id": "creator-1", "content_type": "AUDIO", "content_id": "clip-s"}
    assert _payloads(got) == [_payload(user_id="dora", event_type="media_shared", **known)]

    # And one engagement.subscription.changed per change (the repeat emits nothing), keyed on creator_id
    changes = consume(kafka_cluster.bootstrap_servers, "engagement.subscription.changed", 3)
    assert {key for key, _, _ in changes} == {b"creator-1"}
    payloads = [orjson.loads(value)["payload"] for _, value, _ in changes]
    assert payloads == [
        {"user_id": "dora", "creator_id": "creator-1", "action": "SUBSCRIBED"},
        {"user_id": "erin", "creator_id": "creator-1", "action": "SUBSCRIBED"},
        {"user_id": "dora", "creator_id": "creator-1", "action": "UNSUBSCRIBED"},
    ]

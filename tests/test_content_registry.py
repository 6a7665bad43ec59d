"""The content registry: PUT /internal/v1/content/{contentId}, Postgres record, Redis copy, lookups."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from service_fixtures import API_TIMESTAMP, ApiProcess, token

from daemon import keys
from daemon.registry import UNKNOWN, ContentRegistry
from daemon.settings import Settings

ROUTE = "/internal/v1/content/{}"
INTERNAL = {"Authorization": f"Bearer {token('catalog', scope='read internal')}"}


def _registry_rows(database_url: str) -> dict[str, tuple[str, str]]:
    async def fetch() -> dict[str, tuple[str, str]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT content_id, creator_id, content_type FROM content_registry")
        finally:
            await conn.close()
        return {r["content_id"]: (r["creator_id"], r["content_type"]) for r in rows}

    return asyncio.run(fetch())


def test_a_registered_item_is_stored_in_postgres_and_redis(api: ApiProcess) -> None:
    r = api.client.put(
        ROUTE.format("clip-7"), json={"creator_id": "creator-1", "content_type": "VIDEO"}, headers=INTERNAL
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("content_id", "creator_id", "content_type")} == {
        "content_id": "clip-7",
        "creator_id": "creator-1",
        "content_type": "VIDEO",
    }
    assert API_TIMESTAMP.fullmatch(body["updated_at"]), body
    # a second PUT replaces the record
    r = api.client.put(
        ROUTE.format("clip-7"), json={"creator_id": "creator-2", "content_type": "AUDIO"}, headers=INTERNAL
    )
    assert (r.status_code, r.json()["creator_id"], r.json()["content_type"]) == (200, "creator-2", "AUDIO")

    assert _registry_rows(api.settings.database_url) == {"clip-7": ("creator-2", "AUDIO")}
    shard = keys.shard_of("clip-7", api.settings.shards)
    with redis.Redis.from_url(api.settings.redis_url, decode_responses=True) as client:
        # the Redis copy is a string key of its own, with its idle TTL (a cold key: docs/redis-memory.md)
        key = keys.registry_key(shard, "clip-7")
        assert client.get(key) == "creator-2|AUDIO"
        assert 0 < client.ttl(key) <= api.settings.counts_idle_ttl_s


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_token"),
        ({"Authorization": "Bearer not-a-jwt"}, 401, "invalid_token"),
        ({"Authorization": f"Bearer {token('svc', scope='ingest')}"}, 403, "insufficient_scope"),
        ({"Authorization": f"Bearer {token('svc')}"}, 403, "insufficient_scope"),
        ({"Authorization": f"Bearer {token('svc', scope='internals')}"}, 403, "insufficient_scope"),
    ],
)
def test_the_registry_needs_a_token_with_the_internal_scope(
    api: ApiProcess, headers: dict[str, str], status: int, code: str
) -> None:
    r = api.client.put(
        ROUTE.format("clip-1"), json={"creator_id": "c", "content_type": "VIDEO"}, headers=headers
    )
    assert (r.status_code, r.json()["error"]) == (status, code)
    assert _registry_rows(api.settings.database_url) == {}


def test_bad_registry_requests_get_their_documented_error(api: ApiProcess) -> None:
    good = {"creator_id": "creator-1", "content_type": "VIDEO"}
    cases: list[tuple[str, object, int, str]] = [
        ("bad id", good, 422, "invalid_content_id"),
        ("c1", b"{not json", 400, "malformed_body"),
        ("c1", [good], 422, "invalid_body"),
        ("c1", {**good, "title": "x"}, 422, "unknown_field"),
        ("c1", {"content_type": "VIDEO"}, 422, "invalid_creator_id"),
        ("c1", {**good, "creator_id": "has space"}, 422, "invalid_creator_id"),
        ("c1", {**good, "creator_id": 12}, 422, "invalid_creator_id"),
        ("c1", {**good, "creator_id": "c" * 129}, 422, "invalid_creator_id"),
        ("c1", {"creator_id": "creator-1"}, 422, "invalid_content_type"),
        ("c1", {**good, "content_type": "video"}, 422, "invalid_content_type"),
        ("c1", {**good, "content_type": ["VIDEO"]}, 422, "invalid_content_type"),
        ("c1", b"x" * 5000, 413, "body_too_large"),
    ]
    problems = []
    for content_id, body, status, code in cases:
        if isinstance(body, bytes):
            r = api.client.put(ROUTE.format(content_id), content=body, headers=INTERNAL)
        else:
            r = api.client.put(ROUTE.format(content_id), json=body, headers=INTERNAL)
        if (r.status_code, r.json().get("error")) != (status, code):
            problems.append((content_id, body, r.status_code, r.text))
    assert problems == []
    assert api.client.get(ROUTE.format("c1"), headers=INTERNAL).status_code == 405
    assert _registry_rows(api.settings.database_url) == {}


async def test_lookups_read_redis_once_then_the_bounded_cache(redis_url: str) -> None:
    # The Redis copy is a cold key (docs/redis-memory.md): a lookup that misses it reads Postgres once
    # and writes the copy back ("" for an item the registry does not know), so Postgres is read only for
    # what Redis does not hold, once.
    settings = Settings(redis_url=redis_url, shards=16, registry_cache_size=2)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    records = [("a", "cr-a", "VIDEO"), ("b", "cr-b", "AUDIO"), ("c", "cr-c", "VIDEO")]
    queries: list[list[str]] = []

    class Postgres:
        async def fetch(self, query: str, content_ids: list[str]) -> list[tuple[str, str, str]]:
            queries.append(sorted(content_ids))
            return [r for r in records if r[0] in content_ids]

    async def postgres() -> Postgres:
        return Postgres()

    def copy_key(content_id: str) -> str:
        return keys.registry_key(keys.shard_of(content_id, 16), content_id)

    try:
        for content_id, creator_id, content_type in records:
            await client.set(copy_key(content_id), f"{creator_id}|{content_type}")
        registry = ContentRegistry(settings, client, postgres)  # type: ignore[arg-type]
        assert await registry.lookup(["a", "b", "c", "zz"]) == {
            "a": ("cr-a", "VIDEO"),
            "b": ("cr-b", "AUDIO"),
            "c": ("cr-c", "VIDEO"),
            "zz": UNKNOWN,
        }
        assert queries == [["zz"]]  # only the item Redis did not hold; its copy written back as ""
        assert await client.get(copy_key("zz")) == ""
        assert await registry.lookup(["zz"]) == {"zz": UNKNOWN}
        assert queries == [["zz"]]  # an unknown item costs Postgres once, then Redis answers
        assert len(registry._cache) == 2  # bounded: the oldest entry went
        await client.flushall()
        # cached entries need no Redis; the evicted one and the unknown one miss Redis: one Postgres read
        assert await registry.lookup(["b", "c", "a", "zz"]) == {
            "b": ("cr-b", "AUDIO"),
            "c": ("cr-c", "VIDEO"),
            "a": ("cr-a", "VIDEO"),
            "zz": UNKNOWN,
        }
        assert queries == [["zz"], ["a", "zz"]]
        assert [await client.get(copy_key(c)) for c in ("a", "zz")] == ["cr-a|VIDEO", ""]
        assert 0 < await client.ttl(copy_key("a")) <= settings.counts_idle_ttl_s
    finally:
        await client.aclose()

"""Live counts (api/live.py, daemon/live.py) on a real ``engagementd api`` over real sockets: the first
message is the item's stats, writes arrive as changed counts, WebSocket and Server-Sent Events carry the
same messages, fan-out costs Redis the same whatever the number of clients, a client that stops reading
is dropped without delaying the others, refusals come before the upgrade, SIGTERM closes with 1001."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import pytest
from live_helpers import (
    Browser,
    EventStream,
    metric,
    next_message,
    redis_commands,
    refused,
    stuck_websocket,
    websocket,
)
from service_fixtures import API_TIMESTAMP, ApiProcess, run_flusher_once, token, wait_until

from daemon.settings import Settings

FAST = {"live_interval_ms": 100, "buffer_flush_interval_ms": 10}


def _auth(user: str, scope: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, scope=scope)}"}


def _counts(message: dict[str, Any]) -> dict[str, Any]:
    assert API_TIMESTAMP.fullmatch(message["ts"]), message
    return {k: v for k, v in message.items() if k != "ts"}


def _views(api: ApiProcess, content_id: str, n: int) -> None:
    r = api.client.post(
        "/api/v1/views/batch",
        json=[{"content_id": content_id} for _ in range(n)],
        headers=_auth("ingester", "ingest"),
    )
    assert r.status_code == 202, r.text


def _like(api: ApiProcess, content_id: str, user: str) -> None:
    r = api.client.post(f"/api/v1/content/{content_id}/like", headers=_auth(user))
    assert r.status_code == 200, r.text


def _comment(api: ApiProcess, content_id: str, user: str) -> None:
    r = api.client.post(f"/api/v1/content/{content_id}/comments", json={"body": "hi"}, headers=_auth(user))
    assert r.status_code == 201, r.text


def _stats(api: ApiProcess, content_id: str) -> dict[str, Any]:
    r = api.client.get(f"/api/v1/content/{content_id}/stats")
    assert r.status_code == 200, r.text
    return r.json()


async def _until(read, want: dict[str, int], timeout_s: float = 20.0) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Messages read until one has every count of ``want``; all of them, in order."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while True:
        message = await read(max(deadline - time.monotonic(), 0.001))
        assert message is not None, f"the stream ended before {want}; saw {seen}"
        seen.append(message)
        if all(message[k] == v for k, v in want.items()):
            return seen


def test_first_message_is_the_stats_and_writes_arrive_on_both_transports(
    start_api, migrated: Settings
) -> None:
    api = start_api(migrated.replace(**FAST))
    item = "live-a"
    _views(api, item, 3)
    wait_until(lambda: _stats(api, item)["views"] == 3, what="3 views in Redis")
    path = f"/api/v1/content/{item}/live"

    async def run() -> None:
        async with websocket(api.base_url, path) as ws, EventStream(api.base_url, path) as sse:
            assert sse.response is not None and sse.response.status_code == 200
            assert sse.response.headers["content-type"].startswith("text/event-stream")
            first_ws, first_sse = await next_message(ws), await sse.next()
            assert first_sse is not None
            assert _counts(first_ws) == _stats(api, item)
            assert _counts(first_sse) == _stats(api, item)
            assert first_ws["views"] == 3 and first_ws["likes"] == 0
            # writes of every kind arrive as changed counts, on both transports
            _views(api, item, 5)
            _like(api, item, "u1")
            _comment(api, item, "u2")
            want = {"views": 8, "likes": 1, "comments": 1}
            by_ws = await _until(lambda t: next_message(ws, t), want)
            by_sse = await _until(sse.next, want)
            assert _counts(first_ws) == _counts(first_sse)  # each stamped when its connection opened
            assert by_ws == by_sse  # then the same messages, ts included
            assert _counts(by_ws[-1]) == _stats(api, item)
            stamps = [m["ts"] for m in [first_ws, *by_ws]]
            assert stamps == sorted(set(stamps))  # each message is a change, in order
            async with websocket(api.base_url, path) as late:  # a later client: the same counts, its own ts
                joined = await next_message(late)
                assert _counts(joined) == _counts(by_ws[-1]) and joined["ts"] > by_ws[-1]["ts"]

    asyncio.run(run())


async def _get(url: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url, headers=headers)


def test_refusals_come_before_the_upgrade(start_api, migrated: Settings) -> None:
    api = start_api(migrated.replace(live_max_connections=2, **FAST))
    creator = "creator-live-1"

    async def run() -> None:
        base = api.base_url
        status, _, body = await refused(base, "/api/v1/content/bad%20id/live")
        assert (status, body["error"]) == (422, "invalid_content_id")
        status, _, body = await refused(base, f"/api/v1/creators/{creator}/live")
        assert (status, body["error"]) == (401, "missing_token")
        status, _, body = await refused(base, f"/api/v1/creators/{creator}/live", **_auth("someone-else"))
        assert (status, body["error"]) == (403, "not_your_creator")
        status, _, body = await refused(base, f"/api/v1/creators/{creator}/live", Authorization="Bearer x")
        assert (status, body["error"]) == (401, "invalid_token")
        # without an upgrade and without Accept: text/event-stream
        r = await _get(f"{base}/api/v1/content/live-b/live")
        assert (r.status_code, r.json()["error"]) == (406, "not_acceptable")
        r = await _get(f"{base}/api/v1/creators/{creator}/live", Accept="text/event-stream")
        assert (r.status_code, r.json()["error"]) == (401, "missing_token")
        # the creator's own token (header or ?access_token=) and scope internal are let in
        async with (
            websocket(base, f"/api/v1/creators/{creator}/live?access_token={token(creator)}") as own,
            EventStream(base, f"/api/v1/creators/{creator}/live", **_auth("ops", "internal")) as ops,
        ):
            stats = api.client.get(f"/api/v1/creators/{creator}/stats").json()
            assert _counts(await next_message(own)) == stats
            first = await ops.next()
            assert first is not None and _counts(first) == stats
            # two connections held: the third is refused, with Retry-After, on either transport
            status, headers, body = await refused(base, "/api/v1/content/live-b/live")
            assert (status, body["error"], headers["retry-after"]) == (503, "too_many_connections", "1")
            r = await _get(f"{base}/api/v1/content/live-b/live", Accept="text/event-stream")
            assert (r.status_code, r.json()["error"]) == (503, "too_many_connections")
        assert metric(base, "engagement_live_connections", stream="creator", transport="websocket") == 0
        async with websocket(base, "/api/v1/content/live-b/live") as ws:  # room again
            assert (await next_message(ws))["views"] == 0

    asyncio.run(run())


def test_creator_stream_follows_subscribers_and_totals(start_api, migrated: Settings) -> None:
    """The creator's message is GET /creators/{id}/stats: its counts move once the flusher wrote them."""
    api = start_api(migrated.replace(**FAST))
    creator = "creator-live-2"
    r = api.client.put(
        "/internal/v1/content/live-c",
        json={"creator_id": creator, "content_type": "VIDEO"},
        headers=_auth("ops", "internal"),
    )
    assert r.status_code in (200, 201), r.text

    async def run() -> None:
        async with websocket(api.base_url, f"/api/v1/creators/{creator}/live", **_auth(creator)) as ws:
            first = await next_message(ws)
            assert _counts(first) == {
                "creator_id": creator, "subscribers": 0, "content_count": 1, "views": 0, "likes": 0,
                "dislikes": 0, "comments": 0, "shares": 0, "watch_seconds": 0,
            }  # fmt: skip
            _views(api, "live-c", 4)
            r = api.client.post(f"/api/v1/creators/{creator}/subscribe", headers=_auth("fan-1"))
            assert r.status_code == 200, r.text
            wait_until(lambda: _stats(api, "live-c")["views"] == 4, what="4 views in Redis")
            await asyncio.to_thread(run_flusher_once, migrated)
            seen = await _until(lambda t: next_message(ws, t), {"views": 4, "subscribers": 1})
            assert _counts(seen[-1]) == api.client.get(f"/api/v1/creators/{creator}/stats").json()

    asyncio.run(run())


def _ticks(api: ApiProcess) -> int:
    return int(metric(api.base_url, "engagement_live_tick_duration_seconds_count", stream="content"))


def _sample(api: ApiProcess, redis_url: str) -> tuple[int, int]:
    """(ticks, Redis commands) read between two ticks (read again when a tick ran in between)."""
    while True:
        before = _ticks(api)
        commands = redis_commands(redis_url)
        if _ticks(api) == before:
            return before, commands


def _commands_per_tick(api: ApiProcess, redis_url: str, ticks: int = 8) -> float:
    start_ticks, start_commands = _sample(api, redis_url)
    wait_until(lambda: _ticks(api) >= start_ticks + ticks, what=f"{ticks} live ticks")
    end_ticks, end_commands = _sample(api, redis_url)
    return (end_commands - start_commands) / (end_ticks - start_ticks)


def test_a_thousand_clients_cost_redis_what_one_costs(start_api, migrated: Settings, redis_url: str) -> None:
    """Per tick, the api reads the watched item once: the Redis commands per tick (scripts' own commands
    included) are exactly the same with 1 client and with 1,000, and there are none with no client."""
    api = start_api(migrated.replace(live_interval_ms=200))
    item = "live-fanout"
    path = f"/api/v1/content/{item}/live"
    _views(api, item, 2)
    wait_until(lambda: _stats(api, item)["views"] == 2, what="2 views in Redis")

    async def connect(n: int) -> list[Any]:
        clients = []
        for start in range(0, n, 100):
            batch = [websocket(api.base_url, path) for _ in range(start, min(n, start + 100))]
            entered = await asyncio.gather(*(c.__aenter__() for c in batch))
            clients += list(zip(batch, entered, strict=True))
        firsts = await asyncio.gather(*(next_message(ws, 30) for _, ws in clients))
        assert {m["views"] for m in firsts} == {2}
        return clients

    async def close(clients: list[Any]) -> None:
        await asyncio.gather(*(c.__aexit__(None, None, None) for c, _ in clients))

    async def run() -> tuple[float, float]:
        one = await connect(1)
        per_tick_one = await asyncio.to_thread(_commands_per_tick, api, redis_url)
        many = await connect(999)
        assert (
            metric(api.base_url, "engagement_live_connections", stream="content", transport="websocket")
            == 1000
        )
        per_tick_many = await asyncio.to_thread(_commands_per_tick, api, redis_url)
        await close(many + one)
        return per_tick_one, per_tick_many

    per_tick_one, per_tick_many = asyncio.run(run())
    assert per_tick_one > 0
    assert per_tick_many == per_tick_one, (per_tick_one, per_tick_many)
    wait_until(
        lambda: metric(api.base_url, "engagement_live_watched", stream="content") == 0, what="no item watched"
    )
    idle_ticks = _ticks(api)
    start = redis_commands(redis_url)
    time.sleep(1.0)  # ten intervals with no client: no tick, no command
    assert (_ticks(api), redis_commands(redis_url)) == (idle_ticks, start)


def test_a_client_that_stops_reading_is_dropped_without_delaying_the_others(
    start_api, migrated: Settings
) -> None:
    timeout_s = 2.0
    api = start_api(
        migrated.replace(live_interval_ms=20, buffer_flush_interval_ms=10, live_send_timeout_s=timeout_s)
    )
    item = "live-slow"
    path = f"/api/v1/content/{item}/live"
    labels = {"stream": "content", "transport": "websocket"}
    stuck = stuck_websocket(api.port, path)

    async def run() -> list[float]:
        arrivals: list[float] = []
        async with websocket(api.base_url, path) as ws:
            await next_message(ws)

            def post_views() -> int:  # a change every tick or two, until the server drops the stuck client
                deadline = time.monotonic() + 60
                posted = 0
                with httpx.Client(base_url=api.base_url, headers=_auth("ingester", "ingest")) as client:
                    while metric(api.base_url, "engagement_live_dropped_total", **labels) == 0:
                        assert time.monotonic() < deadline, (
                            "the client that stopped reading was never dropped"
                        )
                        client.post("/api/v1/views/batch", json=[{"content_id": item}]).raise_for_status()
                        posted += 1
                        time.sleep(0.01)
                return posted

            posting = asyncio.create_task(asyncio.to_thread(post_views))
            while not posting.done():
                try:
                    await next_message(ws, timeout_s=0.5)
                except TimeoutError:
                    continue
                arrivals.append(time.monotonic())
            posted = await posting
            _views(api, item, 1)  # and the reader still gets the counts after the drop
            await _until(lambda t: next_message(ws, t), {"views": posted + 1})
        return arrivals

    arrivals = asyncio.run(run())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) > 50 and max(gaps) < timeout_s / 2, (len(arrivals), max(gaps))
    assert metric(api.base_url, "engagement_live_dropped_total", **labels) == 1
    # the server closed the stuck connection: what it had sent, then the end
    stuck.settimeout(10)
    while stuck.recv(65536):
        pass
    stuck.close()
    wait_until(
        lambda: metric(api.base_url, "engagement_live_connections", **labels) == 0, what="no connection"
    )


def test_sigterm_closes_websockets_with_1001_and_ends_event_streams(start_api, migrated: Settings) -> None:
    api = start_api(migrated.replace(**FAST))
    path = "/api/v1/content/live-term/live"

    async def run() -> None:
        async with websocket(api.base_url, path) as ws, EventStream(api.base_url, path) as sse:
            await next_message(ws)
            assert await sse.next() is not None
            started = time.monotonic()
            os.killpg(api.proc.pid, signal.SIGTERM)
            with pytest.raises(Exception) as closed:  # noqa: PT011 - the library's ConnectionClosed*
                await next_message(ws, timeout_s=20)
            assert (ws.close_code, ws.close_reason) == (1001, "server shutting down"), closed.value
            assert await sse.next(timeout_s=20) is None  # the stream ended (a complete chunked body)
            assert time.monotonic() - started < 10

    asyncio.run(run())
    assert api.proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_live_counts_with_two_workers_on_a_redis_cluster(
    start_api, migrated: Settings, redis_cluster
) -> None:
    """Clients on either worker of ``api --workers 2`` see the counts of items on different shards."""
    settings = migrated.replace(redis_url=redis_cluster.url, redis_cluster=True, shards=64, **FAST)
    api = start_api(settings, workers=2)
    items = [f"live-cluster-{n}" for n in range(6)]

    async def run() -> None:
        clients = [
            websocket(api.base_url, f"/api/v1/content/{item}/live") for item in items for _ in range(4)
        ]
        sockets = [await c.__aenter__() for c in clients]
        try:
            assert [(await next_message(ws))["views"] for ws in sockets] == [0] * len(sockets)
            for n, item in enumerate(items):
                _views(api, item, n + 1)
            for i, ws in enumerate(sockets):
                await _until(lambda t, ws=ws: next_message(ws, t), {"views": i // 4 + 1})
        finally:
            for c in clients:
                await c.__aexit__(None, None, None)

    asyncio.run(run())

    def sent() -> float:  # both workers' counts (merged from snapshots they write every second)
        return metric(api.base_url, "engagement_live_messages_total", stream="content", transport="websocket")

    wait_until(lambda: sent() >= 48, what="48 messages counted")
    time.sleep(1.5)  # a snapshot interval more: nothing else was sent
    assert sent() == 48  # 24 first messages, 24 changes: every client one of each


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_live_page_counts_views_in_a_browser(
    start_api, migrated: Settings, tmp_path, transport: str
) -> None:
    """GET /live/{contentId} in headless Chromium: the number on the page follows the views posted."""
    api = start_api(migrated.replace(**FAST))
    item = "live-page"
    _views(api, item, 2)
    wait_until(lambda: _stats(api, item)["views"] == 2, what="2 views in Redis")
    query = "?transport=sse" if transport == "sse" else ""

    async def shown(browser: Browser, want: str) -> None:
        deadline = time.monotonic() + 30
        while (text := await browser.evaluate("document.getElementById('views').textContent")) != want:
            assert time.monotonic() < deadline, f"the page shows {text!r}, not {want!r}"
            await asyncio.sleep(0.05)

    async def run() -> None:
        async with Browser(f"{api.base_url}/live/{item}{query}", str(tmp_path / "profile")) as browser:
            await shown(browser, "2")
            _views(api, item, 5)
            await shown(browser, "7")
            status = await browser.evaluate("document.getElementById('status').textContent")
            assert ("Server-Sent Events" if transport == "sse" else "WebSocket") in status

    asyncio.run(run())
    opened = metric(api.base_url, "engagement_live_messages_total", stream="content", transport=transport)
    assert opened >= 2

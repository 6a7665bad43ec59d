"""cold: latency of reading stats and liking on hot items vs cold ones (their keys evicted from Redis).

docs/redis-memory.md: a cold key (an item's counts hash, one user's like state) may leave Redis once
Postgres has it; the next request that needs it reads Postgres and seeds Redis. This part measures
what that costs on the real ``engagementd api`` (pinned to the server CPU, ENGAGEMENT_RATE_LIMITS=""):

- ``stats``: ``GET /api/v1/content/{id}/stats`` with the Bearer token of a user who liked the item;
  hot: the item's ``c`` key and the viewer's ``lk`` key are in Redis (``X-Counts-Source: redis``);
  cold: both deleted just before, as an eviction would (``X-Counts-Source: postgres``).
- ``like``: ``POST /api/v1/content/{id}/like`` by a user who has not liked the item (a change: the
  answer must say liked, likes 2: one flushed like of another user + this one); hot: the item's
  ``c`` key in Redis; cold: deleted just before. The pair's ``lk`` key is never there before (a first
  like): the row filter proves Postgres has no row for it, so it is created without a read
  (docs/redis-memory.md, "The row filter").

Setup: every item gets one like through the api, then ``engagementd flusher --once``: Postgres has
the rows, and every key has its idle TTL. The harness deletes only keys that carry a TTL (an evictable,
clean key); a key without one fails the run. Requests are sequential on one keep-alive connection
(stdlib http.client), at a fixed pace (--cold-rate), each timed alone; batches of BATCH items are
prepared (keys checked, deleted or warmed: untimed) then timed, a hot and a cold batch in turn,
which one first alternating (stats: the same items hot and cold; likes: fresh items for every batch).
Per kind and round: p50, p99, and requests/s on one connection (1 / mean latency); medians over
--runs rounds.

Postgres reads are counted with pg_stat_statements (the harness enables it and restarts the private
Postgres before the part's api starts): per phase, the SELECTs the api ran on the engagement tables
and the asyncpg pool's reset statement (one per connection returned to the pool: one per acquire;
a connection asyncpg retires instead, after its 50,000th query, is counted from pg_stat_activity).
A cold request must cost exactly one acquire and one SELECT (a stats read: its own; a like:
ColdLoader.values, the item's counts); a hot one none. The api's
/metrics ``engagement_cold_loads_total`` by kind and ``engagement_cold_load_duration_seconds`` are
read before and after each kind too (the store's loads: a like's; the stats route reads Postgres
itself, which those metrics do not count), and Postgres's own execution time of the statements. After
the rounds a last flush must leave every measured like item with exactly 2 likes in Postgres.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import time
from pathlib import Path
from typing import Any

from daemon import keys
from loadtest.cold_stats import RESET, Statements, classify, labelled, new_accumulator, summarise, summary_of
from loadtest.flush import flush_once
from loadtest.procs import BenchError, log
from loadtest.servers import AppServer, Backends

REQUESTS = 2_000  # timed requests per kind, hot and cold each, per round (--cold-requests)
RATE = 500  # requests per second, sequential (--cold-rate): latency, not throughput
BATCH = 50  # items prepared (keys deleted or checked) then timed together
WARMUP = 200  # untimed requests of each kind after the api starts
STATS_PREFIX = "cs-"  # stats items cs-<i>, liked by the viewer vs-<i>
LIKE_PREFIX = "cl-"  # like items cl-<round>-<i>, liked first by "seed", then by ls-<i>


class Client:
    """One keep-alive HTTP/1.1 connection; every request timed alone (ns)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def send(self, method: str, path: str, token: str) -> tuple[int, int, bytes, str | None]:
        """(latency ns, status, body, X-Counts-Source)."""
        headers = {"Authorization": f"Bearer {token}", "Content-Length": "0"}
        started = time.perf_counter_ns()
        self.conn.request(method, path, headers=headers)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter_ns() - started
        return elapsed, resp.status, body, resp.getheader("x-counts-source")

    def get(self, path: str) -> bytes:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise BenchError(f"GET {path} answered {resp.status}")
        return body

    def close(self) -> None:
        self.conn.close()


def cold_metrics(client: Client) -> dict[str, float]:
    body = client.get("/metrics")
    loads = labelled(body, "engagement_cold_loads_total")
    hits = labelled(body, "engagement_cold_hits_total")
    reads = labelled(body, "engagement_cold_load_duration_seconds_count")
    seconds = labelled(body, "engagement_cold_load_duration_seconds_sum")
    out = {f"loads_{k}": v for k, v in loads.items()}
    out.update({f"hits_{k}": v for k, v in hits.items()})
    out["reads"] = reads.get("", 0.0)
    out["read_seconds"] = seconds.get("", 0.0)
    return out


class Tokens:
    """HS256 tokens of the run's secret, minted once per user."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.now = int(time.time())
        self.cache: dict[str, str] = {}

    def __call__(self, user: str) -> str:
        token = self.cache.get(user)
        if token is None:
            import jwt

            claims = {"sub": user, "iat": self.now, "exp": self.now + 86_400}
            token = self.cache[user] = jwt.encode(claims, self.secret, algorithm="HS256")
        return token


class ColdBench:
    def __init__(self, ns: argparse.Namespace, backends: Backends, workdir: Path) -> None:
        self.n = ns.cold_requests
        self.runs = ns.runs
        self.interval_ns = int(1e9 / ns.cold_rate)
        self.backends = backends
        self.redis = backends.redis
        self.shards = backends.shards
        self.env = {**backends.env, "ENGAGEMENT_RATE_LIMITS": ""}
        self.tokens = Tokens(self.env["ENGAGEMENT_JWT_SECRET"])
        self.workdir = workdir
        self.errors: list[str] = []

    # -- keys -----------------------------------------------------------------------------------------

    def pair_keys(self, content_id: str, user: str) -> tuple[str, str]:
        s = keys.shard_of(content_id, self.shards)
        return keys.counts_key(s, content_id), keys.like_key(s, content_id, user)

    def evict(self, pairs: list[tuple[str, str]]) -> dict[str, int]:
        """Delete the counts and like keys of the pairs, as an eviction would: only keys with a TTL."""
        names = [k for c, u in pairs for k in self.pair_keys(c, u)]
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.pttl(name)
        ttls = pipe.execute()
        pinned = [n for n, t in zip(names, ttls, strict=True) if t == -1]
        if pinned:
            raise BenchError(f"cold: {len(pinned)} keys to evict carry no TTL (unflushed), e.g. {pinned[0]}")
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.delete(name)
        deleted = sum(pipe.execute())
        return {"keys": len(names), "deleted": deleted}

    def present(self, pairs: list[tuple[str, str]], counts_only: bool = False) -> int:
        """How many of the pairs' counts and like keys (``counts_only``: counts keys) Redis holds."""
        pipe = self.redis.pipeline(transaction=False)
        for c, u in pairs:
            names = self.pair_keys(c, u)
            pipe.exists(*(names[:1] if counts_only else names))
        return sum(pipe.execute())

    # -- requests -------------------------------------------------------------------------------------

    def timed(
        self, client: Client, method: str, pairs: list[tuple[str, str]], suffix: str
    ) -> list[tuple[int, int, bytes, str | None]]:
        """The requests of one phase at the fixed pace, each timed alone."""
        out = []
        next_at = time.perf_counter_ns()
        for content_id, user in pairs:
            wait = next_at - time.perf_counter_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            out.append(client.send(method, f"/api/v1/content/{content_id}/{suffix}", self.tokens(user)))
            next_at += self.interval_ns
        return out

    def check(self, kind: str, temp: str, answers: list[tuple[int, int, bytes, str | None]]) -> int:
        """Answers that are not what the phase must give (a stats read of a liked item from the
        expected source; a like that made the state liked with 2 likes)."""
        import orjson

        bad = 0
        for _, status, body, source in answers:
            ok = status == 200
            if ok:
                doc = orjson.loads(body)
                if kind == "stats":
                    want = "redis" if temp == "hot" else "postgres"
                    ok = source == want and doc.get("likes") == 1 and doc.get("viewer_state") == "liked"
                else:
                    ok = doc == {"state": "liked", "likes": 2, "dislikes": 0}
            if not ok:
                bad += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{kind} {temp}: {status} {source} {body[:200]!r}")
        return bad

    # -- setup ----------------------------------------------------------------------------------------

    def like_all(self, client: Client, pairs: list[tuple[str, str]]) -> None:
        for content_id, user in pairs:
            _, status, body, _ = client.send("POST", f"/api/v1/content/{content_id}/like", self.tokens(user))
            if status != 200:
                raise BenchError(f"cold setup: like {content_id} by {user}: {status} {body[:200]!r}")

    def stats_pairs(self) -> list[tuple[str, str]]:
        return [(f"{STATS_PREFIX}{i}", f"vs-{i}") for i in range(self.n)]

    def like_items(self, r: int) -> list[str]:
        return [f"{LIKE_PREFIX}{r}-{i}" for i in range(2 * self.n)]

    def setup(self, client: Client) -> dict[str, Any]:
        t0 = time.monotonic()
        self.like_all(client, self.stats_pairs())
        for r in range(self.runs):
            self.like_all(client, [(c, "seed") for c in self.like_items(r)])
        self.like_all(client, [(f"cw-{i}", "seed") for i in range(WARMUP)])
        log(f"cold: {self.n + 2 * self.n * self.runs + WARMUP} items liked in {time.monotonic() - t0:.1f}s")
        flushed = flush_once(self.backends)
        return {"items": self.n + 2 * self.n * self.runs + WARMUP, "flush": flushed}

    def warm_up(self, client: Client) -> None:
        """Both kinds, hot and cold, untimed: the api's connections and caches as in the rounds."""
        pairs = [(f"cw-{i}", f"lw-{i}") for i in range(WARMUP)]
        self.evict(pairs[: WARMUP // 2])
        self.timed(client, "GET", pairs, "stats")  # half cold, all seed the viewer's state 0
        self.timed(client, "GET", pairs, "stats")
        self.evict(pairs[WARMUP // 2 :])
        self.timed(client, "POST", pairs, "like")

    # -- rounds ---------------------------------------------------------------------------------------

    def phase(
        self,
        client: Client,
        stmts: Statements,
        kind: str,
        temp: str,
        pairs: list[tuple[str, str]],
        acc: dict[str, Any],
    ) -> None:
        method, suffix = ("GET", "stats") if kind == "stats" else ("POST", "like")
        if temp == "cold":
            ev = self.evict(pairs)
            acc["evicted_keys"] += ev["deleted"]
        elif kind == "like":  # the item's counts (the pair's state is new: created by the like)
            acc["keys_missing"] += len(pairs) - self.present(pairs, counts_only=True)
        else:
            acc["keys_missing"] += 2 * len(pairs) - self.present(pairs)
        sessions = stmts.sessions()
        before, before_us = stmts.snapshot()
        answers = self.timed(client, method, pairs, suffix)
        after, after_us = stmts.snapshot()
        delta = after - before
        spent = after_us - before_us
        # asyncpg closes a pool connection that ran max_queries (50,000) queries instead of resetting
        # it when it is given back: that acquire leaves no reset statement, but its session ends
        acc["retired"] += len(sessions - stmts.sessions())
        acc["latencies_ns"] += [a[0] for a in answers]
        acc["bad"] += self.check(kind, temp, answers)
        for name, v in classify(delta).items():
            acc[name] += v
        for query, calls in delta.items():
            acc["statements"][" ".join(query.split())[:100]] += calls
        for query, us in spent.items():
            group = (
                "reset_exec_us" if " ".join(query.lower().split()).rstrip(";") in RESET else "select_exec_us"
            )
            acc[group] += us

    def round(self, client: Client, stmts: Statements, r: int) -> dict[str, Any]:
        row: dict[str, Any] = {"round": r + 1}
        plans = {
            "stats": [(b, b) for b in _batches(self.stats_pairs())],
            "like": list(
                zip(
                    _batches([(c, f"ls-{i}") for i, c in enumerate(self.like_items(r)[: self.n])]),
                    _batches([(c, f"ls-{i}") for i, c in enumerate(self.like_items(r)[self.n :])]),
                    strict=True,
                )
            ),
        }
        for kind, batches in plans.items():
            acc = {t: new_accumulator() for t in ("hot", "cold")}
            m0 = cold_metrics(client)
            for b, (hot, cold) in enumerate(batches):
                order = ("hot", "cold") if (b + r) % 2 == 0 else ("cold", "hot")
                for temp in order:
                    self.phase(client, stmts, kind, temp, hot if temp == "hot" else cold, acc[temp])
            m1 = cold_metrics(client)
            row[kind] = {t: summary_of(a) for t, a in acc.items()}
            row[kind]["metrics_delta"] = {k: m1.get(k, 0) - m0.get(k, 0) for k in sorted(set(m0) | set(m1))}
            hot, cold = row[kind]["hot"], row[kind]["cold"]
            row[kind]["p50_cold_minus_hot_us"] = cold["p50_us"] - hot["p50_us"]
            log(
                f"cold round {r + 1} {kind}: hot p50 {hot['p50_us']:.0f} us p99 {hot['p99_us']:.0f} us, "
                f"cold p50 {cold['p50_us']:.0f} us p99 {cold['p99_us']:.0f} us; per cold request "
                f"{cold['acquires_per_request']:.3f} acquires, {cold['selects_per_request']:.3f} SELECTs; "
                f"hot {hot['acquires'] + hot['selects'] + hot['other']} statements; "
                f"bad answers {hot['bad'] + cold['bad']}"
            )
        return row


def _batches(pairs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    return [pairs[i : i + BATCH] for i in range(0, len(pairs), BATCH)]


def consistency(bench: ColdBench) -> dict[str, Any]:
    """After a last flush: every measured like item has exactly 2 likes in Postgres (one flushed before
    the rounds, one measured, hot or cold: no like lost or counted twice by a load)."""
    flushed = flush_once(bench.backends)
    out = bench.backends.pg.psql(
        "SELECT count(*), count(*) FILTER (WHERE likes = 2) FROM content_counters "
        f"WHERE content_id LIKE '{LIKE_PREFIX}%'",
        dbname="engagement",
    )
    items, two = (int(x) for x in out.strip().split("|"))
    rows = int(
        bench.backends.pg.psql(
            f"SELECT count(*) FROM likes WHERE content_id LIKE '{LIKE_PREFIX}%' AND value = 1",
            dbname="engagement",
        ).strip()
    )
    want = 2 * bench.n * bench.runs
    log(
        f"cold: {two}/{items} measured items with 2 likes in Postgres, {rows} like rows "
        f"(want {want}, {2 * want})"
    )
    return {
        "items": items,
        "items_with_2_likes": two,
        "like_rows": rows,
        "flush": flushed,
        "ok": items == want and two == want and rows == 2 * want,
    }


def bench_cold(ns: argparse.Namespace, backends: Backends, workdir: Path, out: dict[str, Any]) -> None:
    bench = ColdBench(ns, backends, workdir)
    res: dict[str, Any] = {
        "requests_per_kind": bench.n,
        "rate_per_s": ns.cold_rate,
        "batch": BATCH,
        "rounds": [],
    }
    out["cold"] = res
    stmts = Statements(backends)
    server: AppServer | None = None
    client: Client | None = None
    gc_was = gc.isenabled()
    try:
        server = AppServer("cold", bench.env, workdir)
        client = Client(server.port)
        res["setup"] = bench.setup(client)
        bench.warm_up(client)
        gc.disable()  # no collector pause inside a timed request of the harness
        t0 = time.monotonic()
        for r in range(ns.runs):
            res["rounds"].append(bench.round(client, stmts, r))
            server.alive()
        res["seconds"] = round(time.monotonic() - t0, 1)
    finally:
        if gc_was:
            gc.enable()
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
        stmts.close()
    res["errors"] = bench.errors
    res["consistency"] = consistency(bench)
    summarise(res)

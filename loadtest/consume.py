"""consume: events/s through one ``engagementd consume`` process into Redis, against a bare loop.

N ``media_started`` events (content ids uniform over 100,000, or with ``--consume-ids zipf`` Zipf-like
(s = 1.1) over 1,000,000; half with a user_id, 30% with watch_duration_seconds) are produced once to
topics of librdkafka's mock cluster, which runs in the harness (client CPU). The mock keeps only ~5 MB
per partition and creates topics with 4 partitions, so the events go to N / 60,000 topics (15,000 per
partition), all of which the consumer reads as ingest topics (``ENGAGEMENT_CONSUMER_INGEST_TOPIC``
takes a list). Each round then reads all of them twice, pinned to the server CPU:

- bare: loadtest/bare_consumer.py, a confluent-kafka consume loop that only decodes each message;
- real: ``engagementd consume --once`` in a new consumer group on an emptied Redis. The harness polls
  the group's applied offsets in Redis: the rate is the events applied after the first batch over
  the time from that batch to the last. Every run must count exactly N views in Redis.

Reported: the medians of both rates and of the per-round ratios real/bare; and, because the machine
is shared, what does not depend on the CPU share the processes got: the consumer's events per CPU-second
(/proc, over the same window) and Redis's CPU time per event (INFO cpu).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from loadtest.bodies import default_pool, zipf_cdf, zipf_index
from loadtest.procs import CHILDREN, CPUS, BenchError, engagementd_cmd, log, pinned, run_cli, tail
from loadtest.servers import Backends

IDS = 100_000


PER_TOPIC = 60_000


def _produce(bootstrap: str, topics: list[str], n: int, ids: str = "uniform") -> None:
    import orjson
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10_000})
    rng = random.Random(42)
    cdf = zipf_cdf(default_pool("zipf")) if ids == "zipf" else None
    for i in range(n):
        payload: dict[str, Any] = {"event_type": "media_started", "content_id": f"item-{_index(rng, cdf)}"}
        if i % 2:
            payload["user_id"] = f"user-{rng.randrange(1_000_000)}"
        if i % 10 < 3:
            payload["watch_duration_seconds"] = 30
        event = {"event_id": str(uuid.uuid4()), "timestamp": "2026-11-22T00:00:00.000Z"}
        value = orjson.dumps({**event, "source_service": "bench", "payload": payload})
        while True:
            try:
                producer.produce(topics[i % len(topics)], value, payload.get("user_id", str(i)).encode())
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise BenchError("could not produce the consumer benchmark's events")


def _index(rng: random.Random, cdf: Any) -> int:
    return zipf_index(rng, cdf) if cdf is not None else rng.randrange(IDS)


def _bare(bootstrap: str, topic: str, n: int, batch: int, workdir: Path) -> float:
    cmd = [sys.executable, "-m", "loadtest.bare_consumer", "--bootstrap", bootstrap, "--topic", topic]
    cmd += ["--events", str(n), "--batch", str(batch)]
    res = subprocess.run(pinned(cmd, CPUS.server), capture_output=True, timeout=300, check=False)
    if res.returncode != 0:
        raise BenchError(f"bare consumer failed: {res.stderr.decode()[-2000:]}")
    out = json.loads(res.stdout.decode().strip().splitlines()[-1])
    return out["events"] / out["seconds"]


def _real(
    backends: Backends, bootstrap: str, topic: str, n: int, batch: int, workdir: Path
) -> dict[str, Any]:
    backends.redis.flushall()
    # A running deployment has its row filters (the flusher and migrate build them): without them
    # every item new to Redis would be loaded from Postgres, as after a Redis that lost its data.
    run_cli(["row-filter", "--rebuild"], backends.env)
    group = f"bench-{uuid.uuid4().hex[:8]}"
    env = {
        **backends.env,
        "ENGAGEMENT_KAFKA_BOOTSTRAP": bootstrap,
        "ENGAGEMENT_CONSUMER_GROUP": group,
        "ENGAGEMENT_CONSUMER_GROUP_PROTOCOL": "consumer",
        "ENGAGEMENT_CONSUMER_INGEST_TOPIC": topic,
        "ENGAGEMENT_CONSUMER_PUBLISHED_TOPIC": "",
        "ENGAGEMENT_CONSUMER_BATCH_MAX_MESSAGES": str(batch),
    }
    log_path = workdir / "consume.log"
    proc = CHILDREN.spawn(
        "consume", engagementd_cmd() + ["consume", "--once"], env, log_path, cpu=CPUS.server
    )
    key = f"eng:{{c:{group}}}:offsets"
    backends.redis.config_resetstat()
    redis_cpu = _redis_cpu(backends)
    first: tuple[float, int, float] | None = None
    last: tuple[float, int, float] = (0.0, 0, 0.0)
    while True:
        applied = sum(int(v) + 1 for v in backends.redis.hvals(key))
        now = time.perf_counter()
        if applied and first is None:
            first = (now, applied, _cpu(proc.pid))
        if applied != last[1]:
            last = (now, applied, _cpu(proc.pid))
        if applied >= n or proc.poll() is not None:
            break
        time.sleep(0.005)  # polling interval of the progress probe
    if proc.wait(timeout=120) != 0 or last[1] != n or first is None:
        raise BenchError(f"engagementd consume failed ({last[1]}/{n} applied):\n{tail(log_path)}")
    CHILDREN.stop(proc)
    names = list(backends.redis.scan_iter(match="eng:{s:*}:c:*", count=5000))
    pipe = backends.redis.pipeline(transaction=False)
    for name in names:
        pipe.hget(name, "views")
    views = sum(int(v or 0) for v in pipe.execute())
    if views != n:
        raise BenchError(f"Redis counted {views} views of {n} events")
    if last[0] <= first[0]:
        raise BenchError("the whole stream fit in one batch: raise --consume-events")
    redis_us = (_redis_cpu(backends) - redis_cpu) * 1e6
    events = last[1] - first[1]
    return {
        "eps": events / (last[0] - first[0]),
        "events_per_cpu_s": events / (last[2] - first[2]) if last[2] > first[2] else None,
        "redis_us_per_event": redis_us / n,
        "redis_commands": _commands_per_event(backends, n),
    }


def _commands_per_event(backends: Backends, n: int) -> dict[str, dict[str, float]]:
    """Redis's commands of the run (the scripts' own included), per event: calls and CPU-µs, by command,
    costliest first. The scripts' entries (evalsha) include the time of the commands they call."""
    stats = backends.redis.info("commandstats")
    rows = {
        name.removeprefix("cmdstat_"): {"calls": v["calls"] / n, "us": v["usec"] / n}
        for name, v in stats.items()
        if name != "cmdstat_info"
    }
    return {
        k: {"calls": round(v["calls"], 3), "us": round(v["us"], 3)}
        for k, v in sorted(rows.items(), key=lambda kv: -kv[1]["us"])
    }


def _redis_cpu(backends: Backends) -> float:
    info = backends.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of one live process, 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_consume(ns: Any, backends: Backends, workdir: Path, out: dict[str, Any]) -> None:
    from daemon.kafka_mock import MockCluster

    n, batch = ns.consume_events, ns.consume_batch
    with MockCluster() as cluster:
        run_id = uuid.uuid4().hex[:6]
        topics = [f"bench.ingest.{run_id}.{i}" for i in range(max(1, -(-n // PER_TOPIC)))]
        topic = ",".join(topics)
        t0 = time.monotonic()
        _produce(cluster.bootstrap_servers, topics, n, ns.consume_ids)
        log(f"consume: {n:,} events produced in {time.monotonic() - t0:.1f}s")
        rounds = []
        for i in range(ns.runs):
            bare = _bare(cluster.bootstrap_servers, topic, n, batch, workdir)
            real = _real(backends, cluster.bootstrap_servers, topic, n, batch, workdir)
            eps = real["eps"]
            per_cpu = real["events_per_cpu_s"]
            rounds.append(
                {
                    "bare_eps": round(bare),
                    "real_eps": round(eps),
                    "ratio": round(eps / bare, 3),
                    "real_events_per_cpu_s": round(per_cpu) if per_cpu else None,
                    "redis_us_per_event": round(real["redis_us_per_event"], 2),
                    "redis_commands_per_event": real["redis_commands"],
                }
            )
            log(
                f"consume round {i + 1}: bare {bare:,.0f} events/s, engagementd {eps:,.0f} events/s ("
                f"{per_cpu or 0:,.0f} per consumer CPU-second; "
                f"Redis {real['redis_us_per_event']:.1f} CPU-us/event)"
            )
            log(
                "  Redis per event (calls, CPU-us): "
                + ", ".join(
                    f"{k} {v['calls']:.2f} {v['us']:.2f}" for k, v in list(real["redis_commands"].items())[:8]
                )
            )
    out["consume"] = {
        "events": n,
        "ids": ns.consume_ids,
        "batch": batch,
        "rounds": rounds,
        "bare_median_eps": statistics.median(r["bare_eps"] for r in rounds),
        "real_median_eps": statistics.median(r["real_eps"] for r in rounds),
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "real_events_per_cpu_s_median": statistics.median(r["real_events_per_cpu_s"] or 0 for r in rounds),
        "redis_us_per_event_median": statistics.median(r["redis_us_per_event"] for r in rounds),
    }

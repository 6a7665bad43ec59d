"""``engagementd topics`` and ``engagementd events tail`` on librdkafka's mock cluster (issue 18).

The mock cluster has no controller: CreateTopics and DescribeConfigs time out there, so what runs here
is the plan (seed 003's partitions and retentions), the partition check (ListTopics works), and that
every failure to create or to check is reported and makes the command exit 1. Creating topics and
checking their retention against a real broker is what docker-compose's `topics` service does; it has
not been run on this project's machines (no Kafka broker can run here)."""

from __future__ import annotations

import json
import subprocess

from consumer_helpers import produce
from service_fixtures import run_cli, token

from daemon.settings import Settings
from daemon.topics import plan


def test_the_plan_is_seed_003s() -> None:
    specs = {s.name: (s.partitions, s.retention_days, s.ours) for s in plan(Settings.from_env({}))}
    assert specs == {
        "user.engagement.events": (48, 90, True),
        "engagement.subscription.changed": (12, 30, True),
        "engagement.ingest": (12, 7, True),
        "engagement.ingest.dlq": (12, 30, True),
        "media.published": (12, 30, False),
        "user.deleted": (0, 0, False),
    }


def _topics(settings: Settings, bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(settings, "topics", "--bootstrap", bootstrap, "--timeout-s", "2", *args)


def test_topics_reports_too_few_partitions_and_what_it_could_not_create(kafka_cluster) -> None:
    settings = Settings.from_env({})
    bootstrap = kafka_cluster.bootstrap_servers
    produce(bootstrap, "user.engagement.events", [("u", b"{}")])  # auto-created: 4 partitions
    ran = _topics(settings, bootstrap)
    assert ran.returncode == 1, ran.stdout
    lines = {line.split()[0]: line for line in ran.stdout.splitlines()}
    assert "BAD  4 partitions, seed 003 says 48" in lines["user.engagement.events"]
    assert "retention not checked" in lines["user.engagement.events"]
    assert "missing, not created" in lines["engagement.subscription.changed"]
    assert "missing (owned by another service)" in lines["media.published"]
    checked = _topics(settings, bootstrap, "--check")
    assert checked.returncode == 1 and "missing (not created (--check))" in checked.stdout


def test_events_tail_prints_the_events_the_api_publishes(
    start_api, migrated: Settings, kafka_cluster
) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    api = start_api(migrated.replace(kafka_bootstrap=bootstrap))
    headers = {"Authorization": f"Bearer {token('fan-1')}"}
    assert api.client.post("/api/v1/content/tail-clip/like", headers=headers).status_code == 200
    assert api.client.post("/api/v1/creators/studio-t/subscribe", headers=headers).status_code == 200
    tail = run_cli(
        migrated, "events", "tail", "--bootstrap", bootstrap, "--from-beginning", "--max", "2", timeout_s=60
    )
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    by_topic = {line["topic"]: line for line in lines}
    liked = by_topic["user.engagement.events"]
    assert liked["key"] == "fan-1" and liked["event"]["payload"]["event_type"] == "media_liked"
    assert by_topic["engagement.subscription.changed"]["event"]["payload"]["action"] == "SUBSCRIBED"

"""``engagementd topics``: the Kafka topics this service produces and consumes, created or checked with
seed 003's settings through confluent-kafka's AdminClient.

Each topic has a number of partitions and a retention. A topic the service owns (the two it produces,
the ingest topics and their dead-letter topics) is created when missing; a topic another service owns
(``media.published``, ``user.deleted``) is only checked. An existing topic with fewer partitions, or
with another retention, is reported and makes the command exit 1: never silently accepted (more
partitions than the seed asks for is fine: keys keep their order within a partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.events import SUBSCRIPTION_CHANGED, USER_ENGAGEMENT_EVENTS
from daemon.settings import Settings, ingest_topics

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_days: int
    ours: bool  # created by this command when missing

    @property
    def retention_ms(self) -> int:
        return self.retention_days * DAY_MS


def plan(settings: Settings) -> list[TopicSpec]:
    """Seed 003's topics of this service (the ingest topics and their ``.dlq``: this service's own
    choice, 12 partitions and 7 days, 30 for dead letters, which someone must read)."""
    specs = [
        TopicSpec(USER_ENGAGEMENT_EVENTS, 48, 90, ours=True),
        TopicSpec(SUBSCRIPTION_CHANGED, 12, 30, ours=True),
    ]
    for topic in ingest_topics(settings):
        specs += [TopicSpec(topic, 12, 7, ours=True), TopicSpec(f"{topic}.dlq", 12, 30, ours=True)]
    if settings.consumer_published_topic:  # Content Service's, seed 003: 12 partitions, 30 days
        specs.append(TopicSpec(settings.consumer_published_topic, 12, 30, ours=False))
    if settings.consumer_user_deleted_topic:  # not in seed 003: checked for existence only
        specs.append(TopicSpec(settings.consumer_user_deleted_topic, 0, 0, ours=False))
    return specs


@dataclass
class Finding:
    spec: TopicSpec
    ok: bool
    text: str


def reconcile_topics(
    admin: Any, specs: list[TopicSpec], timeout_s: float, create: bool = True
) -> list[Finding]:
    """Check each topic (and create the missing ones of ours, with ``create``): one finding each."""
    from confluent_kafka.admin import ConfigResource, NewTopic

    existing = {name: len(t.partitions) for name, t in admin.list_topics(timeout=timeout_s).topics.items()}
    findings: dict[str, Finding] = {}
    missing = [s for s in specs if s.name not in existing]
    to_create = [s for s in missing if s.ours and create]
    for spec in missing:
        if spec not in to_create:
            why = "owned by another service" if not spec.ours else "not created (--check)"
            findings[spec.name] = Finding(spec, False, f"missing ({why})")
    if to_create:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, config={"retention.ms": str(s.retention_ms)}) for s in to_create],
            request_timeout=timeout_s,
            operation_timeout=timeout_s,
        )
        for spec in to_create:
            try:
                futures[spec.name].result(timeout=timeout_s + 5)
                findings[spec.name] = Finding(spec, True, f"created ({_wanted(spec)})")
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal here
                findings[spec.name] = Finding(spec, False, f"missing, not created: {_reason(exc)}")
    present = [s for s in specs if s.name in existing]
    retention = _retentions(admin, [s for s in present if s.retention_days], timeout_s, ConfigResource)
    for spec in present:
        problems = []
        if existing[spec.name] < spec.partitions:
            problems.append(f"{existing[spec.name]} partitions, seed 003 says {spec.partitions}")
        if spec.retention_days:
            found = retention.get(spec.name)
            if isinstance(found, Exception):
                problems.append(f"retention not checked: {_reason(found)}")
            elif found != spec.retention_ms:
                problems.append(
                    f"retention.ms {found}, seed 003 says {spec.retention_ms} ({spec.retention_days} days)"
                )
        if problems:
            findings[spec.name] = Finding(spec, False, "; ".join(problems))
        else:
            findings[spec.name] = Finding(spec, True, f"ok ({existing[spec.name]} partitions)")
    return [findings[s.name] for s in specs]


def _retentions(admin: Any, specs: list[TopicSpec], timeout_s: float, config_resource: Any) -> dict[str, Any]:
    """Each topic's retention.ms (an int), or the exception that kept it from being read."""
    if not specs:
        return {}
    resources = [config_resource(config_resource.Type.TOPIC, s.name) for s in specs]
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    found: dict[str, Any] = {}
    for resource, future in futures.items():
        try:
            entry = future.result(timeout=timeout_s + 5).get("retention.ms")
            found[resource.name] = int(entry.value) if entry is not None and entry.value is not None else None
        except Exception as exc:  # noqa: BLE001
            found[resource.name] = exc
    return found


def _wanted(spec: TopicSpec) -> str:
    return f"{spec.partitions} partitions, retention {spec.retention_days} days"


def _reason(exc: Exception) -> str:
    error = exc.args[0] if exc.args else exc
    return str(getattr(error, "str", lambda: error)())


def run_topics(settings: Settings, bootstrap: str, check_only: bool, timeout_s: float) -> int:
    """Print one line per topic; 0 when every one is as seed 003 says, else 1."""
    from confluent_kafka.admin import AdminClient

    if not bootstrap:
        print("engagementd topics: no Kafka (ENGAGEMENT_KAFKA_BOOTSTRAP or --bootstrap)")
        return 2
    admin = AdminClient({"bootstrap.servers": bootstrap})
    findings = reconcile_topics(admin, plan(settings), timeout_s, create=not check_only)
    width = max(len(f.spec.name) for f in findings)
    for finding in findings:
        wanted = _wanted(finding.spec) if finding.spec.partitions else "existence only"
        state = "ok " if finding.ok else "BAD"
        print(f"{finding.spec.name:<{width}}  {state}  {finding.text}  [wanted: {wanted}]")
    return 0 if all(f.ok for f in findings) else 1

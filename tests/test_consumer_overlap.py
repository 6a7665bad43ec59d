"""Consumer batches whose offsets overlap: a batch still being applied when its messages reach another
batch (another consumer after a rebalance, or the same one handed its partition back), and a batch
re-delivered after its offsets were applied. Each view counts once, and the store says why.

These tests drive the batch layer (consumer/batch.py) directly, with real ``Message`` objects fetched
from librdkafka's mock cluster, two ``BatchProcessor`` instances standing for two consumers of one group
(each on its own Redis client, over the same Redis and the same group's idempotency store), and a real
Postgres. A test-side ``OffsetStore`` subclass records every ``begin`` (ranges asked, conflicts
answered) and can run a step of the other consumer just before one ``begin``: that fixes the
interleaving without sleeping. What a batch does with its messages depends only on their topic,
partition and offset and on the store in Redis, not on how the group protocol assigned the partition,
so the protocol only decides how the messages are fetched; the first test fetches them both ways.

The last two: a batch whose drains have not landed yet when another consumer recovers its journal
counts once (the recovery leaves the drain marks that deduplicate them to the sweeper); and so does one
whose own consumer finishes it while another is recovering it (take_journal flags the journal, and
finish_consumed tells the first consumer to keep its marks).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis
from confluent_kafka import Message
from consumer_helpers import INGEST, consumer_settings, envelope, fetch_messages, produce
from service_fixtures import counters_in_postgres, run_flusher_once

from consumer.actions import ActionRunner
from consumer.batch import BatchProcessor, Prepared
from consumer.dlq import DeadLetterProducer
from consumer.metrics import ConsumerMetrics
from consumer.store import OffsetStore
from daemon import keys
from daemon.core import Core
from daemon.kafka_mock import MockCluster
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.store import Store
from daemon.store.offsets import Range

T = TypeVar("T")
# views per item, in one partition (one key), shuffled: 6 items, 105 views
VIEWS = {f"ov-{j}": 5 * (j + 1) for j in range(6)}


class RecordingOffsets(OffsetStore):
    """The real offsets store, recording each ``begin``: (the ranges asked, the conflicting fields
    answered: empty when reserved). ``before_begin``, when set, is awaited once, before the next
    ``begin`` reaches Redis (after this consumer read the store's state)."""

    def __init__(self, store: Store, group: str) -> None:
        super().__init__(store, group)
        self.begins: list[tuple[list[Range], list[str]]] = []
        self.before_begin: Callable[[], Awaitable[None]] | None = None
        # awaited once, after the next ``journal`` (a recovery taking a batch's journal) read Redis
        self.after_journal: Callable[[], Awaitable[None]] | None = None

    async def journal(self, batch_id: str) -> tuple[list[Range], list[Any]] | None:
        taken = await super().journal(batch_id)
        hook, self.after_journal = self.after_journal, None
        if hook is not None:
            await hook()
        return taken

    async def begin(self, batch_id: str, ranges: list[Range], calls: list[Any]) -> list[str]:
        hook, self.before_begin = self.before_begin, None
        if hook is not None:
            await hook()
        conflicts = await super().begin(batch_id, ranges, calls)
        self.begins.append((list(ranges), list(conflicts)))
        return conflicts

    def refused(self) -> list[tuple[list[Range], list[str]]]:
        return [(ranges, conflicts) for ranges, conflicts in self.begins if conflicts]


@dataclass
class Member:
    """One consumer of the group, as ``consumer.main.run_consumer`` builds it, without the Kafka loop."""

    processor: BatchProcessor
    offsets: RecordingOffsets
    registry: Any

    def duplicates(self) -> float:
        return self.registry.get_sample_value("engagement_consumer_duplicates_total", {"topic": INGEST}) or 0


@contextlib.asynccontextmanager
async def members(settings: Settings, n: int) -> AsyncIterator[list[Member]]:
    made: list[Member] = []
    closing: list[Callable[[], Awaitable[None]]] = []
    try:
        for _ in range(n):
            metrics = Metrics(roles=("consumer",))
            consumer_metrics = ConsumerMetrics(metrics.registry)
            core = Core.create(settings, metrics)
            closing.append(core.close)
            dead_letters = DeadLetterProducer(settings.kafka_bootstrap, settings.consumer_group, 0.02)
            closing.append(lambda d=dead_letters: asyncio.to_thread(d.close))
            offsets = RecordingOffsets(core.store, settings.consumer_group)
            runner = ActionRunner(core, consumer_metrics, None, lambda: False)
            processor = BatchProcessor(
                settings, core.store, metrics, consumer_metrics, offsets, runner, dead_letters, lambda: False
            )
            made.append(Member(processor, offsets, metrics.registry))
        yield made
    finally:
        for close in reversed(closing):
            await close()


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` on the event loop (the consumers run meanwhile); fail after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)  # a poll interval: the condition is what is waited for


async def within(
    work: Awaitable[T], timeout_s: float, what: str, stop: Callable[[], str | None] = lambda: None
) -> T:
    """Run ``work`` to its end; fail after ``timeout_s`` (``what`` says what did not happen), or as soon
    as ``stop()`` returns a reason (polled while it runs)."""
    task = asyncio.ensure_future(work)
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while not task.done():
            reason = stop()
            if reason is not None:
                raise AssertionError(reason)
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s: {what}")
            await asyncio.wait({task}, timeout=0.01)
        return task.result()
    finally:
        await _cancel(task)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait (bounded) for it to end: cancelled again while it runs, since a
    cancellation that lands in a Redis call can come out as a connection error, which the consumer
    retries."""
    deadline = asyncio.get_running_loop().time() + 10
    while not task.done() and asyncio.get_running_loop().time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the test reports its own failure


def _refused_again(offsets: RecordingOffsets, allowed: int, since: str) -> str | None:
    """A reason to stop when ``offsets`` answered more than ``allowed`` begins: a batch asking again
    after ``since`` would be refused forever (it asks for offsets already applied)."""
    if len(offsets.begins) <= allowed:
        return None
    return f"a batch still asks to reserve offsets after {since}: begin answered {offsets.begins[allowed:]}"


def _views_records(seed: int) -> list[tuple[str, bytes]]:
    ids = [content_id for content_id, n in VIEWS.items() for _ in range(n)]
    random.Random(seed).shuffle(ids)
    # one key: one partition, offsets 0 to 104
    return [("k", envelope({"event_type": "media_started", "content_id": c})) for c in ids]


def _offsets_field(msgs: list[Message]) -> tuple[str, int]:
    """The offsets hash field of the messages' partition, and their last offset."""
    return f"{INGEST}:{msgs[0].partition()}", msgs[-1].offset()


def _fetched(kafka_cluster: MockCluster, group_protocol: str = "consumer") -> list[Message]:
    records = _views_records(3)
    produce(kafka_cluster.bootstrap_servers, INGEST, records)
    msgs = fetch_messages(kafka_cluster.bootstrap_servers, INGEST, len(records), group_protocol)
    assert len({m.partition() for m in msgs}) == 1
    assert [m.offset() for m in msgs] == list(range(len(records)))
    return msgs


def _views_in_postgres(settings: Settings) -> dict[str, int]:
    run_flusher_once(settings)
    return {c: row["views"] for c, row in counters_in_postgres(settings.database_url).items() if row["views"]}


def _assert_counted_once(settings: Settings, field: str, last: int) -> None:
    """Each view counted once, item by item, in Postgres; every offset applied, nothing journaled."""
    assert _views_in_postgres(settings) == VIEWS
    assert _store_state(settings) == ({field: last}, {field: last}, 0)


def _store_state(settings: Settings) -> tuple[dict[str, int], dict[str, int], int]:
    """(applied offsets, reserved offsets, unfinished journals) of the group."""
    group = settings.consumer_group
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as r:
        applied = {k: int(v) for k, v in r.hgetall(keys.consumer_offsets_key(group)).items()}
        claims = {k: int(v) for k, v in r.hgetall(keys.consumer_claims_key(group)).items()}
        journals = r.hlen(keys.consumer_journal_key(group)) + r.hlen(keys.consumer_journal_ranges_key(group))
    return applied, claims, journals


@pytest.mark.parametrize("group_protocol", ["classic", "consumer"])
def test_a_second_consumer_cannot_reserve_offsets_a_batch_in_flight_holds(
    kafka_cluster: MockCluster, migrated: Settings, group_protocol: str
) -> None:
    # Given 105 views of 6 items on one partition, fetched from Kafka, and two consumers of one group
    # that both take them (a rebalance handed the partition to the second while the first had it)
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    msgs = _fetched(kafka_cluster, group_protocol)
    field, last = _offsets_field(msgs)
    whole = [(field, 0, last)]

    async def scenario() -> tuple[list[tuple[list[Range], list[str]]], float]:
        async with members(settings, 2) as (first, second):
            held: list[Prepared] = []

            async def first_takes_the_batch() -> None:
                # the first consumer reserves the offsets, journals and applies its drains, and
                # stops there, before marking them applied (finish_consumed)
                prepared = await first.processor.prepare(msgs)
                await prepared.apply()
                held.append(prepared)

            # When the second consumer read the store (nothing applied, nothing journaled) and the
            # first one reserves the batch before the second asks to
            second.offsets.before_begin = first_takes_the_batch
            commits = await within(
                second.processor.process(msgs),
                30,
                "the second consumer's batch",
                stop=lambda: _refused_again(second.offsets, 1, "the first consumer's batch was recovered"),
            )
            assert commits == {(INGEST, msgs[0].partition()): last + 1}
            # and the first consumer then finishes its batch
            assert first.offsets.begins == [(whole, [])]
            assert await within(held[0].finish(), 30, "the first batch's finish") == commits

            return second.offsets.begins, second.duplicates()

    begins, duplicates = asyncio.run(scenario())

    # Then each view counts once, item by item
    assert _views_in_postgres(settings) == VIEWS, f"the second consumer's begin answered {begins}"
    # since the second consumer's reservation was refused, and it took the whole batch for duplicates
    # (it recovered the first one's journal, whose drains count once)
    assert begins == [(whole, [field])], (
        f"the second consumer reserved offsets the first one's batch held: begin answered {begins}"
    )
    assert duplicates == len(msgs)
    # and every offset is applied, nothing left journaled
    assert _store_state(settings) == ({field: last}, {field: last}, 0)


def test_a_batch_handed_back_to_its_consumer_waits_for_its_own_batch_in_flight(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given 105 views on one partition, fetched from Kafka, and one consumer whose batch of them is
    # journaled and applied but not finished
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    msgs = _fetched(kafka_cluster)
    field, last = _offsets_field(msgs)
    whole = [(field, 0, last)]

    async def scenario() -> None:
        async with members(settings, 1) as (member,):
            offsets = member.offsets
            prepared = await member.processor.prepare(msgs)
            await prepared.apply()
            # When a rebalance hands it the same messages again (its partition revoked and assigned
            # back before it committed)
            again = asyncio.ensure_future(member.processor.prepare(msgs))
            try:
                # Then the second batch is refused the offsets the first one holds, and waits
                await until(lambda: len(offsets.begins) > 1 or again.done(), 30, "the second batch's begin")
                assert offsets.begins[1] == (whole, [field]), (
                    "the second batch reserved offsets its own first batch held: "
                    f"begin answered {offsets.begins}"
                )
                assert not again.done()
                # until the first one is finished; it then finds every message applied
                await within(prepared.finish(), 30, "the first batch's finish")
                finished_at = len(offsets.begins) + 1  # an attempt that read the store before it
                second = await within(
                    again,
                    30,
                    "the second batch, once the first one is finished",
                    stop=lambda: _refused_again(offsets, finished_at, "the first batch was finished"),
                )
                await second.apply()
                assert await second.finish() == {(INGEST, msgs[0].partition()): last + 1}
                assert [conflicts for _, conflicts in offsets.begins[:2]] == [[], [field]]
                assert all(conflicts == [field] for _, conflicts in offsets.begins[1:])
                assert member.duplicates() == len(msgs)
            finally:
                await _cancel(again)

    asyncio.run(scenario())

    _assert_counted_once(settings, field, last)


def test_a_re_delivered_batch_skips_exactly_the_applied_offsets(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given 105 views of 6 items on one partition, fetched from Kafka, and a consumer that applied the
    # first 40 of them (offsets 0 to 39)
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    msgs = _fetched(kafka_cluster)
    field, last, k = f"{INGEST}:{msgs[0].partition()}", msgs[-1].offset(), 40

    async def scenario() -> None:
        async with members(settings, 1) as (member,):
            offsets = member.offsets

            def refused() -> str | None:
                if offsets.refused():
                    return (
                        "a re-delivered batch was refused its reservation (it would retry forever): "
                        f"begin answered {offsets.begins}"
                    )
                return None

            await within(member.processor.process(msgs[:k]), 30, "the first 40 views", refused)
            assert offsets.begins == [([(field, 0, k - 1)], [])]

            # When all 105 are delivered again (a replay from the start: 40 applied, 65 not)
            await within(member.processor.process(msgs), 30, "the re-delivered batch", refused)
            # Then it reserves and applies offsets 40 to 104 only, and counts 40 duplicates
            assert offsets.begins[1:] == [([(field, k, last)], [])], (
                f"offsets 0 to {k - 1} were applied, the replay must reserve {k} to {last}: {offsets.begins}"
            )
            assert member.duplicates() == k

            # When all 105 are delivered once more (every offset applied)
            await within(member.processor.process(msgs), 30, "the batch of applied offsets", refused)
            # Then it reserves nothing and skips every message
            assert len(offsets.begins) == 2, f"a batch of applied offsets reserved some: {offsets.begins}"
            assert member.duplicates() == k + len(msgs)

    asyncio.run(scenario())

    # and each view counts once, item by item
    _assert_counted_once(settings, field, last)


def test_a_batch_recovered_while_its_drains_are_still_in_flight_counts_once(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given 105 views on one partition, fetched from Kafka, and a first consumer that journaled its
    # batch of them but whose drains have not reached Redis yet (slow, or cut off from Redis)
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    msgs = _fetched(kafka_cluster)
    field, last = _offsets_field(msgs)

    async def scenario() -> float:
        async with members(settings, 2) as (first, second):
            prepared = await first.processor.prepare(msgs)
            # When a second consumer, handed the partition, takes the same messages: it recovers the
            # first one's journal (applies its drains, marks the offsets applied)
            await within(second.processor.process(msgs), 30, "the second consumer's batch")
            # and the first consumer's drains land afterwards, and it finishes its batch
            await within(prepared.apply(), 30, "the first batch's drains")
            await within(prepared.finish(), 30, "the first batch's finish")
            return second.duplicates()

    assert asyncio.run(scenario()) == len(msgs)

    # Then each view counts once
    _assert_counted_once(settings, field, last)


def test_a_batch_its_consumer_finishes_while_another_recovers_it_counts_once(
    kafka_cluster: MockCluster, migrated: Settings
) -> None:
    # Given 105 views on one partition, fetched from Kafka, and a first consumer that journaled and
    # applied its batch of them, not finished yet
    settings = consumer_settings(migrated, kafka_cluster.bootstrap_servers)
    msgs = _fetched(kafka_cluster)
    field, last = _offsets_field(msgs)

    async def scenario() -> float:
        async with members(settings, 2) as (first, second):
            prepared = await first.processor.prepare(msgs)
            await prepared.apply()

            async def first_finishes() -> None:
                await within(prepared.finish(), 30, "the first batch's finish")

            # When a second consumer, handed the partition, takes the first one's journal to recover
            # it, and the first one finishes its batch right then, before the recovery re-applies the
            # drains (the first consumer must keep the drain marks the re-applied drains need)
            second.offsets.after_journal = first_finishes
            await within(second.processor.process(msgs), 30, "the second consumer's batch")
            assert second.offsets.after_journal is None, "the second consumer recovered no journal"
            return second.duplicates()

    assert asyncio.run(scenario()) == len(msgs)

    # Then each view counts once
    assert _views_in_postgres(settings) == VIEWS, "the recovery's drains counted a second time"
    assert _store_state(settings) == ({field: last}, {field: last}, 0)

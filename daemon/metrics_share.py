"""One /metrics for all workers of ``engagementd api --workers N``.

Each worker keeps its own registry (the hot path never touches shared memory). Every second, and on
each scrape, a worker writes a snapshot of its samples to ``<dir>/<pid>.msgpack``; a scrape of any
worker merges the snapshots of all live workers: counters, histograms and gauges are summed per
label set (the gauges of the api, such as buffer items, are per-worker amounts). Snapshots of
workers that are gone are dropped with them, like the counts of a restarted process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import msgpack
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from daemon.loops import Every
from daemon.proc.childproc import pid_alive

SNAPSHOT_INTERVAL_S = 1.0


def snapshot(registry: CollectorRegistry) -> bytes:
    families = []
    for metric in registry.collect():
        samples = [
            (s.name, sorted(s.labels.items()), s.value)
            for s in metric.samples
            if not s.name.endswith("_created")
        ]
        families.append((metric.name, metric.documentation, metric.type, samples))
    return msgpack.packb(families)


class SharedMetrics:
    def __init__(self, directory: str, registry: CollectorRegistry) -> None:
        self.dir = Path(directory)
        self.registry = registry
        self.path = self.dir / f"{os.getpid()}.msgpack"
        self._snapshots = Every("metrics-snapshot", SNAPSHOT_INTERVAL_S, self._write_later)

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(snapshot(self.registry))
        tmp.replace(self.path)  # readers never see half a file

    async def _write_later(self) -> None:
        self.write()

    def start(self) -> None:
        self.write()  # one now, before the first scrape
        self._snapshots.start()  # then every SNAPSHOT_INTERVAL_S

    async def stop(self) -> None:
        await self._snapshots.cancel()
        self.path.unlink(missing_ok=True)

    def render(self) -> bytes:
        self.write()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(self.dir))
        return generate_latest(registry)


class _Merged(Collector):
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
        for path in sorted(self.dir.glob("*.msgpack")):
            if not pid_alive(int(path.stem)):
                path.unlink(missing_ok=True)
                continue
            try:
                families = msgpack.unpackb(path.read_bytes())
            except (OSError, ValueError):
                continue  # replaced or removed while we read: skip this one worker's snapshot
            for name, doc, typ, samples in families:
                _, _, values = merged.setdefault(name, (doc, typ, {}))
                for sample_name, labels, value in samples:
                    key = (sample_name, tuple(tuple(pair) for pair in labels))
                    values[key] = values.get(key, 0.0) + value
        for name, (doc, typ, values) in merged.items():
            metric = Metric(name, doc, typ)
            for (sample_name, labels), value in values.items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric

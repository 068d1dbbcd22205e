"""Prometheus metrics. Every process writes counters and histograms into one Redis hash (so every
worker on every machine contributes); the API's /metrics reads them at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .jobs import JobStatus

if TYPE_CHECKING:
    from pipeline.residency import ResidencyStats
    from pipeline.routing import RoutingTrace

    from .store import JobStore

STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Metrics:
    """Counters and histograms in a Redis hash, one field per `name|label`. Each write goes into
    the caller's pipeline when one is given (the worker's per-step round trip), else it is sent
    at once; a write that fails is dropped: a lost count must not fail the job it counts."""

    def __init__(self, client: redis.Redis, key: str):
        self.redis = client
        self.key = key

    @contextmanager
    def _writes(self, pipe: redis.client.Pipeline | None) -> Iterator[redis.client.Pipeline]:
        if pipe is not None:
            yield pipe
            return
        own = self.redis.pipeline(transaction=False)
        yield own
        try:
            own.execute()
        except redis.RedisError:
            pass  # metrics are best effort: a lost count must never fail the job it describes

    def count(self, name: str, label: str = "", by: float = 1, pipe: redis.client.Pipeline | None = None) -> None:
        with self._writes(pipe) as p:
            p.hincrbyfloat(self.key, f"{name}|{label}", by)

    def observe(self, name: str, seconds: float, buckets: tuple[float, ...],
                pipe: redis.client.Pipeline | None = None) -> None:
        with self._writes(pipe) as p:
            for b in buckets:
                if seconds <= b:
                    p.hincrbyfloat(self.key, f"{name}_bucket|{b}", 1)
            p.hincrbyfloat(self.key, f"{name}_count|", 1)
            p.hincrbyfloat(self.key, f"{name}_sum|", seconds)

    def count_routing(self, trace: RoutingTrace, pipe: redis.client.Pipeline | None = None) -> None:
        """One `expert_steps_total` per expert per step it ran in (the expert load)."""
        steps = Counter(str(expert) for step in trace.steps for expert in step["experts"])
        with self._writes(pipe) as p:
            for expert, n in steps.items():
                p.hincrbyfloat(self.key, f"expert_steps_total|{expert}", n)

    def values(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.redis.hgetall(self.key).items()}


class WeightMoves:
    """Adds a worker's weight traffic to the shared counters: the residency manager keeps running
    totals, so each call adds what is new since the last one."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._counted: dict[tuple[str, str], float] = {}

    def add(self, stats: ResidencyStats, pipe: redis.client.Pipeline | None = None) -> None:
        totals = {("component_loads_total", name): n for name, n in stats.device_loads.items()}
        totals["bytes_to_device_total", ""] = stats.bytes_to_device
        totals["bytes_from_disk_total", ""] = stats.bytes_from_disk
        totals["bytes_streamed_total", ""] = stats.bytes_streamed
        for (name, label), total in totals.items():
            delta = total - self._counted.get((name, label), 0)
            if delta:
                self.metrics.count(name, label, delta, pipe)
                self._counted[name, label] = total


class RedisCollector:
    def __init__(self, store: JobStore, heartbeat_ttl_s: float):
        self.store = store
        self.heartbeat_ttl_s = heartbeat_ttl_s

    def _histogram(self, name, doc, values, buckets):
        h = HistogramMetricFamily(name, doc)
        cum = [(str(b), values.get(f"{name}_bucket|{b}", 0.0)) for b in buckets]
        cum.append(("+Inf", values.get(f"{name}_count|", 0.0)))
        h.add_metric([], cum, values.get(f"{name}_sum|", 0.0))
        return h

    @staticmethod
    def _labelled(name, doc, label, values):
        """A counter with one label, from the `<name>_total|<label value>` fields."""
        counter = CounterMetricFamily(f"paris_{name}", doc, labels=[label])
        prefix = f"{name}_total|"
        for k, v in values.items():
            if k.startswith(prefix):
                counter.add_metric([k[len(prefix):]], v)
        return counter

    def collect(self):
        s = self.store
        try:
            values = s.metrics.values()
            depth = s.queue_depth()
            try:
                running = s.running_count()
            except redis.RedisError:  # no consumer group yet
                running = 0
            workers, storing = s.worker_counts(self.heartbeat_ttl_s)
        except redis.RedisError:
            return
        yield GaugeMetricFamily("paris_queue_depth", "Jobs queued and not yet started", value=depth)
        g = GaugeMetricFamily("paris_jobs", "Jobs by current status (active ones)", labels=["status"])
        g.add_metric([JobStatus.QUEUED], depth)
        g.add_metric([JobStatus.IN_PROGRESS], running)
        yield g
        yield GaugeMetricFamily("paris_workers_alive", "Workers with a fresh heartbeat", value=workers)
        yield GaugeMetricFamily("paris_workers_storage_down", "Live workers that cannot store videos (not claiming "
                                "jobs until their storage works again)", value=workers - storing)
        c = CounterMetricFamily("paris_jobs_created", "Jobs accepted by the API")
        c.add_metric([], values.get("jobs_created_total|", 0.0))
        yield c
        yield self._labelled("jobs_finished", "Jobs finished, by final status", "status", values)
        yield self._labelled("worker_stops", "Jobs a worker stopped running, by reason (cancelled, deleted, "
                             "fenced_out, timeout, engine_lost)", "reason", values)
        for name, doc in (("storage_faults", "Artifact writes or reads that failed with an OS error"),
                          ("jobs_requeued", "Jobs handed back to the queue because their files could not be stored")):
            counter = CounterMetricFamily(f"paris_{name}", doc)
            counter.add_metric([], values.get(f"{name}_total|", 0.0))
            yield counter
        yield self._labelled("expert_steps", "Denoising steps routed to each expert (expert load)", "expert", values)
        yield self._labelled("component_loads", "Weights brought to the device, by component (lazy first loads "
                             "and reloads after eviction)", "component", values)
        for name, doc in (("bytes_to_device", "Weight bytes moved onto the compute device"),
                          ("bytes_streamed", "Of those, bytes of experts streamed block by block"),
                          ("bytes_from_disk", "Weight bytes read from safetensors files")):
            counter = CounterMetricFamily(f"paris_{name}", doc)
            counter.add_metric([], values.get(f"{name}_total|", 0.0))
            yield counter
        yield self._histogram("paris_step_seconds", "Duration of one engine tick (one denoising step of every "
                              "active request)", values, STEP_BUCKETS)
        yield self._histogram("paris_job_seconds", "Job duration from start to stored MP4", values, JOB_BUCKETS)
